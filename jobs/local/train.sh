#!/usr/bin/env bash
# Train on this machine: set up whatever is missing, then run mpipipe under mpirun.
#
# Usage: jobs/local/train.sh [-n RANKS] CONFIG [mpipipe train options ...]
#   jobs/local/train.sh -n 4 examples/gpt_tiny.toml --set parallel.schedule=bitpipe
#
# Environment: MPIPIPE_WALLTIME (seconds, default 3600) bounds the whole run: shortly
# before it runs out the ranks save a checkpoint and stop (exit 75); continue with
# --resume latest. MPIPIPE_SKIP_SETUP=1 skips the set-up check. After a run that
# finished, the script draws it (mpipipe plot RUN_DIR); MPIPIPE_PLOT=0 skips that.
# Before mpirun, `mpipipe plan` predicts every rank's memory and the script stops (exit 2)
# with its message when a rank cannot fit MPIPIPE_MEMORY (e.g. 16GiB; default: the first
# GPU's memory from nvidia-smi, else this machine's MemAvailable over the ranks; none: no
# verdict).
#
# GPUs: with CuPy installed (pip install 'mpipipe[gpu]') runtime.device = "auto" puts
# rank i on GPU (i mod GPUs). Messages between GPUs go through host memory unless the
# MPI is CUDA-aware (runtime.cuda_aware; see jobs/slurm/train.sbatch for how to get one).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ranks=4
if [ "${1:-}" = "-n" ]; then
    ranks=${2:-}
    shift 2 || true
fi
if [ $# -lt 1 ] || ! [[ $ranks =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [-n RANKS] CONFIG [--set section.key=value ...] [--out DIR]" >&2
    exit 2
fi

if [ "${MPIPIPE_SKIP_SETUP:-0}" != 1 ]; then
    bash "$repo_root/jobs/local/setup.sh"
fi
python=$repo_root/.venv/bin/python
if [ ! -x "$python" ]; then
    echo "mpipipe: error: $python is missing; run jobs/local/setup.sh (or unset MPIPIPE_SKIP_SETUP)" >&2
    exit 2
fi

config=$1
plan_sets=()  # the --set options, which mpipipe plan reads as train does
previous=""
for argument in "${@:2}"; do
    case $argument in
        --set=*) plan_sets+=("$argument") ;;
        *) if [ "$previous" = --set ]; then plan_sets+=(--set "$argument"); fi ;;
    esac
    previous=$argument
done
# Before any rank starts: `mpipipe plan` predicts every rank's memory (no MPI) and the job
# stops here with its one-line verdict when a rank cannot fit, naming the change that does.
plan_memory=()
if [ -n "${MPIPIPE_MEMORY:-}" ]; then
    if [ "$MPIPIPE_MEMORY" != none ]; then plan_memory=(--memory "$MPIPIPE_MEMORY"); fi
elif command -v nvidia-smi >/dev/null 2>&1; then
    gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2>/dev/null | head -n 1 | tr -d ' ' || true)
    if [[ $gpu_mib =~ ^[0-9]+$ ]]; then plan_memory=(--memory "${gpu_mib}MiB"); fi
else
    available_kib=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB$/\1/p' /proc/meminfo 2>/dev/null || true)
    if [[ $available_kib =~ ^[0-9]+$ ]]; then plan_memory=(--memory "$((available_kib / ranks))KiB"); fi
fi
if ! "$python" -m mpipipe plan "$config" --ranks "$ranks" "${plan_memory[@]}" "${plan_sets[@]}"; then
    echo "mpipipe: not starting the run: see the plan's message above" >&2
    exit 2
fi

# A progress bar when this script writes to a terminal, log lines otherwise
# (under mpirun every rank's stdout looks like a terminal).
if [ -t 1 ]; then export MPIPIPE_PROGRESS=${MPIPIPE_PROGRESS:-bar}; else export MPIPIPE_PROGRESS=${MPIPIPE_PROGRESS:-log}; fi

# One BLAS thread per rank: the ranks themselves fill the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# mpipipe itself stops before the walltime (train.time_limit_s): every rank
# finishes the same step, saves a checkpoint and exits 75. `timeout` is only the
# backstop for a run that cannot stop by itself.
walltime=${MPIPIPE_WALLTIME:-3600}
set +e
timeout --foreground --kill-after=30 "$((walltime + 120))" \
    bash "$repo_root/jobs/local/mpirun.sh" -n "$ranks" "$python" -m mpipipe train "$@" \
    --set "train.time_limit_s=$walltime"
status=$?
set -e
if [ "$status" -eq 0 ] && [ "${MPIPIPE_PLOT:-1}" = 1 ]; then
    # Draw the run: loss curve, measured step timeline, per-rank time breakdown.
    out="runs/$(basename "${1%.*}")"
    previous=""
    for argument in "$@"; do
        if [ "$previous" = "--out" ]; then out=$argument; fi
        previous=$argument
    done
    "$python" -m mpipipe plot "$out" || echo "mpipipe: the run finished but could not be drawn" >&2
fi
if [ "$status" -eq 124 ] || [ "$status" -eq 75 ]; then
    why="stopped with a checkpoint"
    if [ "$status" -eq 124 ]; then why="MPIPIPE_WALLTIME=$walltime s ran out"; fi
    echo "mpipipe: $why; continue with: $0 -n $ranks $* --resume latest" >&2
fi
exit "$status"
