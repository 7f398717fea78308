#!/usr/bin/env bash
# Set up whatever is missing, then run the whole test suite:
# lint, the single-process tests (some start mpiexec jobs themselves), the
# MPI tests under 4 and under 2 ranks, and under 8 ranks the tests whose
# layouts need 8 (oversubscribed on a small machine). Every mpiexec is bounded.
#
# Usage: jobs/local/test.sh [extra pytest options]
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"
bash jobs/local/setup.sh
python=$repo_root/.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

# Every stage runs, so one failure does not hide another; the exit code says if any failed.
failed=()
stage() {
    local name=$1
    shift
    echo "== $name"
    "$@" || failed+=("$name")
}

stage lint "$python" -m ruff check mpipipe tests examples
stage "single-process tests" timeout --kill-after=30 1800 \
    "$python" -m pytest -q tests --ignore=tests/mpi "$@"

# pytest-mpi: every rank runs the tests; rank 0 prints, the others keep quiet
# on stdout (a failure on any rank prints its report to stderr and aborts).
run_mpi_tests() {
    local ranks=$1 limit=$2
    shift 2
    # shellcheck disable=SC2016 # expanded by the inner shell, on each rank
    timeout --kill-after=30 "$limit" bash jobs/local/mpirun.sh -n "$ranks" bash -c '
        rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}
        if [ "$rank" = 0 ]; then exec "$0" -m pytest -q --with-mpi "$@"; fi
        exec "$0" -m pytest -q --with-mpi -p no:cacheprovider "$@" > /dev/null
    ' "$python" tests/mpi "$@"
}
stage "MPI tests on 4 ranks" run_mpi_tests 4 1800 "$@"
stage "MPI tests on 2 ranks" run_mpi_tests 2 900 "$@"
stage "MPI tests on 8 ranks" run_mpi_tests 8 900 --min-ranks 8 "$@"

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all test stages passed"
