import pytest

from .handler import handle

# fwatchdog's helper builds the same event and context as the template's index.py.
testing = pytest.importorskip("fwatchdog.testing", reason="fwatchdog is not installed here")


def test_handle():
    response = testing.call(handle, b"Ada")
    assert response.status == 200
    assert response.text == "Hello, Ada!"
