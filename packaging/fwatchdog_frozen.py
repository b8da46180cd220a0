"""Entry point of the self-contained ``fwatchdog`` that ``build-standalone.sh`` freezes.

PyInstaller's bootloader exports variables for its own use (``LD_LIBRARY_PATH`` pointing at
the bundle's libraries, ``_PYI_*``). The watchdog hands its environment to every handler, and a
handler such as ``node`` must load the image's own ``libstdc++``/``libssl``, not ours, so those
variables are removed (the original ``LD_LIBRARY_PATH`` restored) before the watchdog starts.
The running interpreter is unaffected: the loader reads ``LD_LIBRARY_PATH`` only at exec.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def restore_environment(env: MutableMapping[str, str]) -> None:
    """Undo what the bootloader added to ``env``."""
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        env["LD_LIBRARY_PATH"] = original
    else:
        env.pop("LD_LIBRARY_PATH", None)
    for name in [name for name in env if name.startswith("_PYI_") or name == "_MEIPASS2"]:
        del env[name]


if __name__ == "__main__":
    restore_environment(os.environ)

    from fwatchdog.cli import main

    raise SystemExit(main())
