"""Package list only (everything else is in pyproject.toml): the source folder watchdog/ is
installed as the import package fwatchdog (PyPI's watchdog owns that name), and the root
templates/ folder as fwatchdog.devtools.bundled; automatic discovery can do neither."""

from setuptools import find_packages, setup

SOURCE = "watchdog"
PACKAGE = "fwatchdog"

found = find_packages(include=[SOURCE, f"{SOURCE}.*"])
packages = [PACKAGE + name[len(SOURCE) :] for name in found]
setup(packages=[*packages, f"{PACKAGE}.devtools.bundled"])
