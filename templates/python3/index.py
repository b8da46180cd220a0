"""The classic python3 entry point: the watchdog forks this per request; the body arrives on
stdin, handle(req)'s result goes to stdout."""

import sys

from function import handler


def get_stdin():
    return sys.stdin.read()


if __name__ == "__main__":
    ret = handler.handle(get_stdin())
    if ret is not None:
        print(ret)
