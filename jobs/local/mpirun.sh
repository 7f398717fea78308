#!/usr/bin/env bash
# mpiexec for a laptop, a workstation or a CI container.
#
# Usage: jobs/local/mpirun.sh -n 4 python -m mpipipe train examples/gpt_tiny.toml
#
# With Open MPI it allows more ranks than cores (--oversubscribe) and, when
# run as root (containers, CI), sets the two variables Open MPI insists on.
set -euo pipefail

launcher=${MPIEXEC:-mpiexec}
extra=()
if [ "$(id -u)" -eq 0 ]; then
    # Open MPI refuses root, even for --version, without these.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
if "$launcher" --version 2>&1 | grep -q -e "Open MPI" -e "OpenRTE" -e "open-mpi.org"; then
    extra+=(--oversubscribe)
    # Only the loopback and shared memory exist on a laptop; skip interface probing.
    export OMPI_MCA_btl_tcp_if_include=${OMPI_MCA_btl_tcp_if_include:-lo}
    export OMPI_MCA_oob_tcp_if_include=${OMPI_MCA_oob_tcp_if_include:-lo}
fi
exec "$launcher" "${extra[@]}" "$@"
