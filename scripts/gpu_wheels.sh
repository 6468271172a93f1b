#!/usr/bin/env bash
# Fetches, on a machine with the package registries, the wheels the GPU check needs and the GPU
# machine's image lacks (it has torch, triton, transformers, numpy, scipy, networkx; not duckdb,
# polars or datasets), for its Python 3.12 on x86-64. A device call carries at most 64 MiB and
# polars' runtime alone is 54 MB, so they go in two folders (git-ignored via .git/info/exclude):
# .whl1 (polars) and .whl2 (the rest), carried by two calls in a row (see scripts/gpu_check.sh).
# Usage: bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for d in .whl1 .whl2; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
rm -rf .whl .whl1 .whl2 && mkdir .whl1 .whl2
py=${PYTHON:-.venv/bin/python}
# Versions pinned to what this checkout's venv runs, so the GPU run tests the same code paths.
pins=$("$py" -m pip list --format=freeze 2>/dev/null \
       | grep -iE '^(duckdb|polars|polars-runtime-32|datasets|dill|multiprocess|python-igraph|igraph|texttable|gguf)==' || true)
for pin in $pins; do
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$(case $pin in polars*) echo .whl1;; *) echo .whl2;; esac)" "$pin"
done
du -sh .whl1 .whl2
