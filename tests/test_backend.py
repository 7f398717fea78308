"""The backend choice, GPU binding inputs, BLAS thread sizing and the CUDA-aware decision."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mpipipe import threads
from mpipipe.backend import LOCAL_RANK_VARIABLES, local_rank_from_environment, select_backend
from mpipipe.errors import UsageError
from mpipipe.runtime import cuda_aware

from mpirun import REPO


def test_cpu_backend_uses_numpy_with_the_requested_float_type():
    for name, dtype in (("float32", np.float32), ("float64", np.float64)):
        backend = select_backend("cpu", name)
        assert backend.xp is np and backend.dtype is dtype and not backend.is_gpu
        assert backend.asarray([1, 2]).dtype == dtype


@pytest.mark.parametrize(("device", "dtype", "named"), [
    ("cpu", "float16", "dtype 'float16'"),
    ("tpu", "float32", "device 'tpu'"),
])
def test_python_api_refuses_an_unknown_device_or_dtype(device, dtype, named):
    """The schema checks runtime.device and runtime.dtype; a direct caller gets a ValueError."""
    with pytest.raises(ValueError, match=named):
        select_backend(device, dtype)


def test_gpu_where_none_exists_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        backend = select_backend("auto", "float32")
    except UsageError:
        pytest.fail("auto must fall back to the CPU")
    if backend.is_gpu:
        pytest.skip("a GPU is visible despite CUDA_VISIBLE_DEVICES=''")
    with pytest.raises(UsageError, match="runtime.device: 'gpu' was requested"):
        select_backend("gpu", "float32")


def test_local_rank_comes_from_the_first_launcher_variable_set(monkeypatch):
    for name in LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert local_rank_from_environment() is None
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert local_rank_from_environment() == 3
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")  # Open MPI's wins over Slurm's
    assert local_rank_from_environment() == 1


def test_blas_threads_share_the_cores_among_the_ranks_of_a_node():
    probe = "import os, mpipipe; print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    clean = {key: value for key, value in os.environ.items()
             if key not in threads.THREAD_VARIABLES + threads.LOCAL_SIZE_VARIABLES}
    cores = len(os.sched_getaffinity(0))

    def threads_with(**variables) -> str:
        return subprocess.run([sys.executable, "-c", probe], env={**clean, **variables},
                              capture_output=True, text=True, cwd=REPO).stdout.strip()

    assert threads_with() == "None"  # one process: NumPy's own default
    assert threads_with(OMPI_COMM_WORLD_LOCAL_SIZE="4") == str(max(1, cores // 4))
    assert threads_with(OMPI_COMM_WORLD_LOCAL_SIZE="4", OMP_NUM_THREADS="3") == "None"


@pytest.mark.parametrize(("setting", "on_gpu", "expected"), [
    ("yes", True, True), ("no", True, False), ("yes", False, False),
])
def test_explicit_cuda_aware_settings(setting, on_gpu, expected):
    assert cuda_aware.resolve_cuda_aware(setting, on_gpu, "Open MPI v4.1.4") is expected


def test_auto_cuda_aware_follows_the_library(monkeypatch):
    for name in cuda_aware.ENVIRONMENT_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cuda_aware, "_open_mpi_query", lambda: None)
    monkeypatch.setattr(cuda_aware, "_ompi_info_says_cuda", lambda: False)
    assert not cuda_aware.resolve_cuda_aware("auto", True, "Open MPI v4.1.4")
    monkeypatch.setattr(cuda_aware, "_open_mpi_query", lambda: True)
    assert cuda_aware.resolve_cuda_aware("auto", True, "Open MPI v4.1.4")
    monkeypatch.setenv("MPICH_GPU_SUPPORT_ENABLED", "1")
    assert cuda_aware.resolve_cuda_aware("auto", True, "MPICH Version: 3.4a2 (Cray)")


# (library version, environment switches set, Open MPI's MPIX_Query_cuda_support answer,
#  ompi_info's answer, the decision); None: that source cannot answer.
LIBRARY_CASES = [
    ("Open MPI v4.1.4", {}, True, False, True),
    ("Open MPI v4.1.4", {}, False, True, False),  # the loaded library's own answer wins
    ("Open MPI v4.1.4", {}, None, True, True),  # no query in the library: ompi_info decides
    ("Open MPI v4.1.4", {}, None, False, False),
    ("Open MPI v4.1.4", {}, None, None, False),  # nobody says yes: stage through the host
    ("MPICH Version: 4.0", {}, True, True, False),  # only Open MPI is asked
    ("MPICH Version: 3.4a2 (Cray)", {"MPICH_GPU_SUPPORT_ENABLED": "1"}, None, None, True),
    ("MVAPICH2 Version 2.3.7", {"MV2_USE_CUDA": "1"}, None, None, True),
    ("Intel(R) MPI Library 2021.9", {"I_MPI_OFFLOAD": "1"}, None, None, True),
    ("Intel(R) MPI Library 2021.9", {"I_MPI_OFFLOAD": "0"}, None, None, False),
]


@pytest.mark.parametrize(("library", "switches", "query", "ompi_info", "expected"),
                         LIBRARY_CASES)
def test_cuda_aware_decision_from_the_library_and_the_environment(
    monkeypatch, library, switches, query, ompi_info, expected
):
    for name in cuda_aware.ENVIRONMENT_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    for name, value in switches.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cuda_aware, "_open_mpi_query", lambda: query)
    monkeypatch.setattr(cuda_aware, "_ompi_info_says_cuda", lambda: ompi_info)
    assert cuda_aware.mpi_is_cuda_aware(library) is expected


@pytest.mark.parametrize(("line", "expected"), [
    ("mca:mpi:base:param:mpi_built_with_cuda_support:value:true", True),
    ("mca:mpi:base:param:mpi_built_with_cuda_support:value:false", False),
    ("mca:btl:smcuda:param:btl_smcuda_use_cuda_ipc:value:true", False),
])
def test_ompi_info_answer_comes_from_its_parsable_output(tmp_path, monkeypatch, line, expected):
    stub = tmp_path / "ompi_info"
    stub.write_text(f"#!/bin/sh\necho 'mca:mpi:base:param:mpi_show_handle_leaks:value:false'\n"
                    f"echo '{line}'\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert cuda_aware._ompi_info_says_cuda() is expected


def test_without_ompi_info_there_is_no_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no ompi_info on PATH
    assert cuda_aware._ompi_info_says_cuda() is None
