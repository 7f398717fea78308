#!/usr/bin/env bash
# Give this MPI rank one GPU of its node, then run the command.
#
# Usage, as the program mpiexec starts on every rank:
#   mpiexec -n 8 --ppn 4 bash jobs/pbs/gpu_affinity.sh python -m mpipipe train CONFIG
#
# Sets CUDA_VISIBLE_DEVICES to the GPU of this rank's node-local rank (from the
# launcher: Cray PALS, Open MPI, MPICH/Intel MPI or Slurm), so CUDA never starts a
# context on another rank's GPU, and mpipipe then uses the one GPU it sees.
#   MPIPIPE_GPU_ORDER="3,2,1,0"  local rank i gets the i-th GPU of this list (match each
#                                rank's CPU cores to its nearest GPU: nvidia-smi topo -m)
#   MPIPIPE_GPUS_PER_NODE=4      GPUs per node (default: counted by nvidia-smi)
#   MPIPIPE_GPU_BIND=none        leave CUDA_VISIBLE_DEVICES alone: every rank sees every
#                                GPU and mpipipe picks GPU (local rank mod count). Some MPI
#                                libraries copy between GPUs of a node (CUDA IPC) only then.
# Without GPUs (no nvidia-smi, or 0 GPUs) it runs the command unchanged.
set -euo pipefail

local_rank=${PALS_LOCAL_RANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${PMI_LOCAL_RANK:-${SLURM_LOCALID:-0}}}}}
if [ "${MPIPIPE_GPU_BIND:-single}" != none ]; then
    if [ -n "${MPIPIPE_GPU_ORDER:-}" ]; then
        IFS=, read -r -a gpus <<<"$MPIPIPE_GPU_ORDER"
    else
        count=${MPIPIPE_GPUS_PER_NODE:-}
        if [ -z "$count" ]; then
            count=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
        fi
        gpus=()
        for ((index = 0; index < count; index++)); do gpus+=("$index"); done
    fi
    if [ "${#gpus[@]}" -gt 0 ]; then
        export CUDA_VISIBLE_DEVICES=${gpus[local_rank % ${#gpus[@]}]}
    fi
fi
exec "$@"
