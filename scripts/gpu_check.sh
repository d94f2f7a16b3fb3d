#!/usr/bin/env bash
# GPU checks for a session lent a CUDA machine (a developer's tool; CI has no GPU and never runs this).
# Installs dse without its dependencies into the machine's own PyTorch (offline: the packages the kernels and
# benchmarks need are there, ariths-gen travels as a wheel in .whl/), then runs the steps named:
#   tests   - every backend on CUDA tensors against the reference (tests/kernels/test_cuda_backends.py,
#             tests/kernels/test_triton.py)
#   sweep   - tile sweep of the Triton GEMM kernel (scripts/triton_sweep.py --quick)
#   kernels - dse bench kernels --device cuda --json
#   model   - dse bench model --device cuda --batch 1024 --json
#   profile - scripts/profile_model.py: top operators of a ResNet-20 forward, quantized and table mode
#   search  - the fashion_resnet20 study end to end on CUDA (dse search: prepare + AGN + search +
#             baselines), every stage's seconds and the headline figures in OUTDIR/search_times.json.
#             The idx files: $FASHION_DIR, else /usr/share/datasets/fashion-mnist, else ./fashion-mnist
#             (copy the four *-ubyte.gz files there, 30 MB, git-ignored, and carry that folder along).
# Usage: scripts/gpu_check.sh [OUTDIR] [STEP ...]    (default: all steps; OUTDIR default ./gpu-out)
set -u
out=${1:-gpu-out}
shift || true
steps=${*:-tests sweep kernels model}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$out/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 ||
    { cat "$out/install.log"; exit 1; }
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
rc=0
for step in $steps; do
    echo "=== $step"
    t0=$(date +%s)
    case $step in
    tests) timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_backends.py \
        tests/kernels/test_triton.py 2>&1 | tee "$out/tests.log" | tail -15 ;;
    sweep) timeout 300 python3 scripts/triton_sweep.py --quick ${SWEEP_ARGS:-} --json "$out/sweep.json" \
        >"$out/sweep.log" 2>&1; grep -E "float32|BEST|default|inexact|FAILED" "$out/sweep.log" ;;
    kernels) timeout 240 dse bench kernels --device cuda --json >"$out/bench_kernels.json" 2>"$out/bench_kernels.err"
        python3 - "$out/bench_kernels.json" <<'EOF'
import json, sys
from dse.kernels.bench import format_table
print(format_table(json.load(open(sys.argv[1]))))
EOF
        ;;
    model) timeout 180 dse bench model --device cuda --batch 1024 --json >"$out/bench_model.json" \
        2>"$out/bench_model.err"; cat "$out/bench_model.json"; tail -3 "$out/bench_model.err" ;;
    profile) timeout 120 python3 scripts/profile_model.py >"$out/profile.log" 2>&1; cat "$out/profile.log" | cut -c1-160 ;;
    search) data=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
        [ -d "$data" ] || data=fashion-mnist
        s0=$(date +%s)
        timeout 560 dse search fashion_resnet20 --device cuda --data "$data" --out "$out/fashion_resnet20" \
            --no-report --json >"$out/search.json" 2>"$out/search.err" || { tail -5 "$out/search.err"; rc=1; }
        python3 scripts/search_times.py "$out/fashion_resnet20" $(($(date +%s) - s0)) \
            >"$out/search_times.json" && cat "$out/search_times.json" ;;
    *) echo "unknown step $step"; rc=2 ;;
    esac

    echo "=== $step: $(($(date +%s) - t0)) s"
done
exit $rc
