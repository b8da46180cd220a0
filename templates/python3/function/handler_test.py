from .handler import handle


def test_handle():
    assert handle("Ada") == "Hello, Ada!"
