"""The local developer workflow: ``fwatchdog new``, ``build --shrinkwrap``, ``up``, ``logs``.

Each module owns one concern: :mod:`.stack` (the stack file), :mod:`.templates` (finding and
reading templates), :mod:`.new`, :mod:`.build` (build contexts), :mod:`.venvs` (cached
virtual environments), :mod:`.up` (running the gateway and the functions as local processes)
and :mod:`.logs`.
"""

from __future__ import annotations


class DevError(Exception):
    """A developer command cannot go on; ``problems`` holds one line each."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
