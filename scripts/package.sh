#!/usr/bin/env bash
# Build the loganomaly wheel for a cluster, plus a .zip copy of it for `spark-submit --py-files`.
#
#   scripts/package.sh [OUT_DIR]      (default: dist/)
#
# Writes OUT_DIR/loganomaly-<version>-py3-none-any.whl (Databricks, `pip install` on a cluster image)
# and OUT_DIR/loganomaly.zip, the same bytes under a name Spark puts on the executors' sys.path:
# PySpark adds --py-files entries ending in .zip/.egg/.jar to the Python workers' path, not .whl
# (a .whl reaches the driver only, and tasks fail with "No module named 'loganomaly'").
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)

# Build from a clean copy: setuptools builds in-tree (build/lib, lib/*.egg-info) and keeps files
# removed from lib/ in build/lib, which would then ship in the wheel.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root/pyproject.toml" "$root/README.md" "$work/"
mkdir "$work/lib"
cp -R "$root/lib/loganomaly" "$work/lib/"
find "$work/lib" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

# The project venv has setuptools: build offline with it; elsewhere let pip fetch the backend.
isolation=()
if "$py" -c "import setuptools" 2>/dev/null; then isolation=(--no-build-isolation); fi
"$py" -m pip wheel --quiet --no-deps "${isolation[@]}" -w "$work/dist" "$work"

wheel=$(ls "$work"/dist/loganomaly-*.whl)
cp "$wheel" "$out/"
cp "$wheel" "$out/loganomaly.zip"
echo "$out/$(basename "$wheel")"
echo "$out/loganomaly.zip"
