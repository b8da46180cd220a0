"""Run modes: how a request to the function is executed. One module per family of modes."""

from __future__ import annotations

from ..config import FORK_MODES, WatchdogConfig
from ..logs import FunctionLog
from ..metrics import WatchdogMetrics
from ..process import ProcessTable
from .base import Runner


def build_runner(
    config: WatchdogConfig,
    processes: ProcessTable,
    metrics: WatchdogMetrics,
    function_log: FunctionLog,
) -> Runner:
    """The runner for ``config.mode``."""
    if config.mode in FORK_MODES:
        from .fork import ForkRunner

        return ForkRunner(config, processes, metrics, function_log)
    if config.mode == "http":
        from .http import HttpRunner

        return HttpRunner(config, processes, function_log)
    if config.mode == "static":
        from .static import StaticRunner

        return StaticRunner(config)
    raise NotImplementedError(f"mode {config.mode} is not available in this build")


__all__ = ["Runner", "build_runner"]
