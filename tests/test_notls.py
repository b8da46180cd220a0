"""The watchdog's stand-in for ``ssl`` (watchdog/notls.py), in a fresh interpreter: what
imports ssl at import time works without libssl; a TLS object cannot be made by mistake;
any other name loads the real module, for code that does want TLS."""

from __future__ import annotations

import subprocess

from conftest import PYTHON, ROOT

_SCRIPT = """
import sys
from watchdog.notls import stand_in_for_ssl

def tls_loaded():  # _ssl is the extension module that brings libssl and libcrypto
    return '_ssl' in sys.modules

stand_in_for_ssl()
import asyncio, uvloop, prometheus_client.exposition, ssl
uvloop.run(asyncio.sleep(0))
print('imported, _ssl loaded:', tls_loaded())
try:
    ssl.create_default_context()
except ssl.SSLError as exc:
    print('refused:', exc)
print('version:', ssl.OPENSSL_VERSION.split()[0])
print('real now:', sys.modules['ssl'] is not ssl and tls_loaded())
import ssl
ssl.create_default_context()
"""


def test_the_stand_in_keeps_tls_unloaded_until_a_real_name_is_asked_for() -> None:
    run = subprocess.run(
        [PYTHON, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "imported, _ssl loaded: False",
        "refused: create_default_context: the watchdog does not speak TLS (TLS ends at the"
        " gateway)",
        "version: OpenSSL",
        "real now: True",
    ]
