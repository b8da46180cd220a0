"""fwatchdog: turn a handler into an HTTP service, OpenFaaS-watchdog compatible."""

__version__ = "0.1.0"
