"""Package list only (everything else is in pyproject.toml): the root templates/ folder is
installed as the package watchdog.devtools.bundled, which automatic discovery cannot see."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["watchdog*"]), "watchdog.devtools.bundled"])
