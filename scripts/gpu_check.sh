#!/usr/bin/env bash
# Issue 17: the GPU path on an H100/H200 in one go (about 8 minutes): the kernel's exactness tests,
# the 410M-shaped all-neuron ablation bench, a whole-family ingest profile. Writes every output to
# OUT_DIR and prints a summary at the end.
# The GPU machine reaches no registry and lacks duckdb, polars and datasets: scripts/gpu_wheels.sh
# fetches them here into .whl1 (polars, 55 MB) and .whl2 (the rest), too large for one call's
# 64 MiB, so two calls in a row on the same warm machine (it goes back after 30 s idle):
#   run(carry=[".whl1"], command="bash scripts/gpu_check.sh --install .whl1")
#   run(carry=[".whl2"], command="bash scripts/gpu_check.sh $OUT .whl2")
set -uo pipefail
site=/tmp/rtn-site
if [ "${1:-}" = "--install" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "${2:?wheel folder}"/*.whl
    exit $?
fi
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR WHEEL_DIR}
wheels=${2:?usage: bash scripts/gpu_check.sh OUT_DIR WHEEL_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=python3   # the image's Python holds a CUDA torch and triton: never reinstall them

step() { echo; echo "== $1 ($(date +%T))"; }

step "install: the carried wheels and rtn, no index, no deps (torch stays the image's)"
$py -m pip install -q --no-index --no-deps --no-compile --target "$site" --upgrade "$wheels"/*.whl \
    && $py -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" --upgrade . \
    || { echo "install failed"; exit 1; }
export PYTHONPATH=$site
rtn="$py -m rtn.cli"
$py -c "import torch, triton, rtn; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))" \
    | tee "$out/versions.txt"

step "1. pytest -m gpu (kernel vs CPU path)"
gpu_tests=$(grep -rl "mark.gpu\|pytestmark = pytest.mark.gpu" tests/unit tests/integration 2>/dev/null | tr '\n' ' ')
timeout 240 $py -m pytest -q -m gpu -p no:cacheprovider $gpu_tests 2>&1 | tee "$out/pytest_gpu.txt" | tail -15

step "2. rtn bench --shape 410m --tokens 8192 --device cuda --json"
timeout 180 $rtn bench --shape 410m --tokens 8192 --device cuda --json > "$out/bench_410m.json" 2> "$out/bench_410m.err"
echo "rc=$?"; cat "$out/bench_410m.json"; tail -5 "$out/bench_410m.err"

step "3. a 410m-shaped family of 8 checkpoints, then --profile-ingest on CUDA"
family=/tmp/rtn-family-410m
timeout 120 $rtn bench --save-family "$family" --shape 410m --family-size 8 > "$out/save_family.txt" 2>&1; echo "rc=$?"
timeout 200 $rtn bench --profile-ingest "$family" --device cuda > "$out/profile_ingest.txt" 2>&1; echo "rc=$?"
tail -25 "$out/profile_ingest.txt"

step "summary"
$py - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
try:
    bench = json.loads((out / "bench_410m.json").read_text())
    print(json.dumps(bench, indent=1)[:3000])
except Exception as err:   # the run's own files hold the reason
    print(f"bench: no JSON ({err}); see bench_410m.err")
print((out / "pytest_gpu.txt").read_text().strip().splitlines()[-1:] if (out / "pytest_gpu.txt").exists() else "no pytest output")
PY
