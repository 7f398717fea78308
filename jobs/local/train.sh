#!/usr/bin/env bash
# Train on this machine: set up whatever is missing, then run mpipipe under mpirun.
#
# Usage: jobs/local/train.sh [-n RANKS] CONFIG [mpipipe train options ...]
#   jobs/local/train.sh -n 4 examples/gpt_tiny.toml --set parallel.schedule=bitpipe
#
# Environment: MPIPIPE_WALLTIME (seconds, default 3600) bounds the whole run;
# MPIPIPE_SKIP_SETUP=1 skips the set-up check.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ranks=4
if [ "${1:-}" = "-n" ]; then
    ranks=$2
    shift 2
fi
if [ $# -lt 1 ]; then
    echo "usage: $0 [-n RANKS] CONFIG [--set section.key=value ...] [--out DIR]" >&2
    exit 2
fi

if [ "${MPIPIPE_SKIP_SETUP:-0}" != 1 ]; then
    bash "$repo_root/jobs/local/setup.sh"
fi

# A progress bar when this script writes to a terminal, log lines otherwise
# (under mpirun every rank's stdout looks like a terminal).
if [ -t 1 ]; then export MPIPIPE_PROGRESS=${MPIPIPE_PROGRESS:-bar}; else export MPIPIPE_PROGRESS=${MPIPIPE_PROGRESS:-log}; fi

# One BLAS thread per rank: the ranks themselves fill the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
exec timeout --kill-after=30 "${MPIPIPE_WALLTIME:-3600}" \
    bash "$repo_root/jobs/local/mpirun.sh" -n "$ranks" \
    "$repo_root/.venv/bin/python" -m mpipipe train "$@"
