#!/usr/bin/env bash
# Set up everything mpipipe needs on a Debian/Ubuntu machine, idempotently:
# Open MPI and parallel HDF5 from the distribution, then a virtualenv in
# .venv with mpi4py, NumPy, pytest and h5py built against parallel HDF5.
# Re-running it skips whatever is already in place.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$repo_root/.venv"
python=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

python_needs() {
    # Debian's own python3 comes without venv/ensurepip and without the headers
    # h5py compiles against; a pyenv or conda Python has both.
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        echo python3-venv
    fi
    if ! "$python" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
        echo python3-dev
    fi
    command -v gcc >/dev/null 2>&1 || echo build-essential
}

install_system_packages() {
    local needed=(openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config shellcheck)
    local missing=()
    for pkg in "${needed[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    while read -r pkg; do
        [ -n "$pkg" ] && missing+=("$pkg")
    done < <(python_needs)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages present"
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and no apt-get: load your MPI and parallel HDF5 modules instead (see README, 'Installing on a cluster')"
        exit 1
    fi
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

create_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
}

install_parallel_h5py() {
    if "$venv/bin/python" -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
        log "parallel h5py present"
        return
    fi
    log "building h5py against parallel HDF5 (about 3 minutes)"
    "$venv/bin/python" -m pip install -q numpy mpi4py cython pkgconfig
    CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi \
        "$venv/bin/python" -m pip install -q --no-binary=h5py --no-build-isolation --force-reinstall --no-deps h5py
}

install_mpipipe() {
    log "installing mpipipe (editable) with the test, plot, progress and search extras"
    "$venv/bin/python" -m pip install -q -e "${repo_root}[test,plot,progress,search]"
}

install_system_packages
create_venv
install_parallel_h5py
install_mpipipe
log "ready: $venv"
