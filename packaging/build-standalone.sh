#!/bin/sh
# Build the self-contained fwatchdog: a directory (an executable plus its private interpreter,
# standard library, dependencies and shared libraries) that runs on any glibc Linux image with
# no Python. Dockerfile.template's builder stage and tests/test_standalone.py both run this.
#
#   packaging/build-standalone.sh OUT_DIR
#
# OUT_DIR is replaced; run OUT_DIR/fwatchdog. PYTHON picks the interpreter to freeze
# (default: python3). Needs objdump (binutils), which PyInstaller uses to inspect binaries.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
command -v objdump >/dev/null || { echo "$0: objdump not found: install binutils" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fwatchdog-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Install from a copy, so the build never writes into the source tree (build/, *.egg-info).
mkdir "$work/src"
cp -R "$src/pyproject.toml" "$src/setup.py" "$src/README.md" "$src/watchdog" "$src/templates" \
    "$work/src/"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --no-cache-dir "$work/src[standalone]"

# What goes in, and why, is in fwatchdog.spec. PyInstaller's cache goes in the work dir, so
# that builds running at the same time (test sessions in other checkouts) never share it.
export PYINSTALLER_CONFIG_DIR="$work/pyinstaller"
"$work/venv/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$work/dist" --workpath "$work/build" "$src/packaging/fwatchdog.spec"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$work/dist/fwatchdog" "$out"

# PyInstaller only warns about a module it could not find: insist on every one of ours (the
# spec's noarchive keeps them as files under _internal/; the source folder watchdog/ is the
# package fwatchdog once installed).
(cd "$src" && find watchdog -name '*.py') | while read -r module; do
    bundled="$out/_internal/f${module%.py}.pyc"
    [ -f "$bundled" ] || { echo "$0: $module is not bundled" >&2; exit 1; }
done
"$out/fwatchdog" --version
