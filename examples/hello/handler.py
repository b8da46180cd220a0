"""A classic fork-mode handler: the request body on stdin, the response on stdout."""

import os
import sys

name = sys.stdin.read().strip() or "world"
method = os.environ.get("Http_Method", "?")
path = os.environ.get("Http_Path", "/")
sys.stdout.write(f"Hello, {name}! ({method} {path})\n")
