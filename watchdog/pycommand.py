"""What ``prefork`` needs to know about ``fprocess``: a Python command line, taken apart.

``python3 [-u] [-X opt] [-O] SCRIPT [ARGS]`` or ``python3 [...] -m MODULE [ARGS]``. Anything
else is refused, so that a misconfigured ``prefork`` fails at start instead of per request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

# Options that take a value as the next word (``-X dev``, ``-W error``).
_WITH_VALUE = frozenset("XW")
# Flags that change nothing the zygote has to reproduce beyond passing them to its interpreter.
_FLAGS = frozenset("bBdEiIOPqsuvRS")


class NotPython(ValueError):
    """``fprocess`` is not a Python command line; the message says why."""


@dataclass(frozen=True, slots=True)
class PythonCommand:
    interpreter: str
    options: tuple[str, ...]
    """Interpreter options, passed on to the zygote's own interpreter."""
    target: str
    """The script path, or the module name when ``module`` is true."""
    module: bool
    args: tuple[str, ...]


def parse_python_command(argv: Sequence[str]) -> PythonCommand:
    """Take ``argv`` apart. Raises :class:`NotPython`."""
    if not argv or not os.path.basename(argv[0]).startswith("python"):
        raise NotPython("a command line starting with a python interpreter (python3 index.py)")
    options: list[str] = []
    rest = list(argv[1:])
    while rest and rest[0].startswith("-") and rest[0] != "-":
        word = rest.pop(0)
        if word == "-m":
            if not rest:
                raise NotPython("a module name after -m")
            return PythonCommand(argv[0], tuple(options), rest[0], True, tuple(rest[1:]))
        letters = word[1:]
        if letters[:1] in _WITH_VALUE:
            options.append(word)
            if len(letters) == 1:
                if not rest:
                    raise NotPython(f"a value after {word}")
                options.append(rest.pop(0))
            continue
        if word.startswith("--") or not set(letters) <= _FLAGS:
            raise NotPython(f"interpreter options such as -u, -X or -O, not {word!r}")
        options.append(word)
    if not rest or rest[0] == "-":
        raise NotPython("a script or -m MODULE after the interpreter")
    return PythonCommand(argv[0], tuple(options), rest[0], False, tuple(rest[1:]))
