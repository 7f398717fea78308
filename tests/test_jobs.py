"""jobs/: every script is valid bash and shellcheck-clean; the local, Slurm and PBS scripts run.

The Slurm script runs against a stand-in `srun` that starts the ranks with the
local mpirun (or, to mimic a wrong --mpi plugin, as separate one-rank worlds);
the PBS script runs the real Open MPI mpiexec on a node file naming this host.
"""

import os
import shutil
import subprocess
import sys

import pytest

from mpirun import MPIRUN, REPO

JOBS = REPO / "jobs"
SCRIPTS = sorted(
    path for folder in ("local", "slurm", "pbs") for path in (JOBS / folder).iterdir()
    if path.is_file()
)
SLURM = JOBS / "slurm" / "train.sbatch"
PBS = JOBS / "pbs" / "train.pbs"
GPU_AFFINITY = JOBS / "pbs" / "gpu_affinity.sh"
SHORT_RUN = [
    "examples/gpt_tiny.toml", "--set", "data.source=random", "--set", "model.n_layer=4",
    "--set", "model.d_model=32", "--set", "model.seq_len=16", "--set", "train.steps=3",
]
OPEN_MPI_AS_ROOT = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo",
}

SRUN_STUB = """#!/usr/bin/env bash
call="$*"
printf '%s\\n' "${call//$'\\n'/ }" >> "$STUB_LOG"
while [ $# -gt 0 ] && [[ $1 == --* ]]; do shift; done
if [[ " $* " == *" train "* ]] && [ -n "${STUB_TRAIN_EXIT:-}" ]; then exit "$STUB_TRAIN_EXIT"; fi
if [ "${STUB_SINGLETONS:-0}" = 1 ]; then
    status=0
    for ((task = 0; task < SLURM_NTASKS; task++)); do SLURM_PROCID=$task "$@" || status=$?; done
    exit "$status"
fi
exec bash "$STUB_MPIRUN" -n "$SLURM_NTASKS" "$@"
"""
RECORDING_STUB = """#!/usr/bin/env bash
printf '%s %s\\n' "$(basename "$0")" "$*" >> "$STUB_LOG"
"""
QSTAT_STUB = """#!/usr/bin/env bash
echo "Job Id: $2"
echo "    Resource_List.walltime = $STUB_WALLTIME"
"""


def run_script(args: list, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPIPIPE_PROGRESS": "log", **env}
    return subprocess.run(
        ["bash", *map(str, args)], cwd=REPO, env=environment, capture_output=True, text=True,
        timeout=timeout,
    )


def metric_lines(run_dir) -> int:
    return len((run_dir / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(JOBS)) for p in SCRIPTS])
def test_script_is_valid_bash_and_shellcheck_clean(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert shutil.which("shellcheck"), "shellcheck is missing: jobs/local/setup.sh installs it"
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_every_script_that_takes_arguments_starts_with_its_usage():
    for script in SCRIPTS:
        if script.name == "setup.sh":
            continue
        header = script.read_text().split("set -euo pipefail")[0]
        assert "Usage" in header or "usage" in header, script


def test_local_train_script_trains_a_few_steps(tmp_path):
    run_dir = tmp_path / "local"
    result = run_script(
        [JOBS / "local" / "train.sh", "-n", "2", *SHORT_RUN, "--out", run_dir],
        {"MPIPIPE_SKIP_SETUP": "1", "MPIPIPE_WALLTIME": "120"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert metric_lines(run_dir) == 3
    assert (run_dir / "trace.json").exists()


@pytest.mark.parametrize("script", ["local", "slurm", "pbs"])
def test_a_run_that_cannot_fit_stops_before_any_rank_starts(tmp_path, script, request):
    """The scripts run `mpipipe plan` with the job's --set options and ranks first."""
    run_dir = tmp_path / "never"
    tight = {"MPIPIPE_MEMORY": "100KiB", "MPIPIPE_SKIP_SETUP": "1"}
    if script == "local":
        args, env = [JOBS / "local" / "train.sh", "-n", "2", *SHORT_RUN, "--out", run_dir], tight
    elif script == "slurm":
        args, env = [SLURM, *SHORT_RUN, "--out", run_dir], {**request.getfixturevalue(
            "slurm_env"), **tight}
    else:
        args, env = [PBS, *SHORT_RUN, "--out", run_dir], {**request.getfixturevalue(
            "pbs_env"), **tight}
    result = run_script(args, env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mpipipe: error")]
    assert len(errors) == 1 and "does not fit: pipeline rank" in errors[0], result.stderr
    assert "more than the 100.00 KiB budget" in errors[0]
    assert "on 2 pipeline ranks" in result.stdout  # the plan of the job's ranks, as trained
    assert "mpipipe: job" not in result.stdout and not run_dir.exists()
    assert not os.path.exists(tmp_path / "calls.log")  # no srun, no qsub


def test_local_train_script_rejects_a_bad_rank_count():
    result = run_script([JOBS / "local" / "train.sh", "-n", "four", "examples/gpt_tiny.toml"],
                        {"MPIPIPE_SKIP_SETUP": "1"})
    assert result.returncode == 2 and "usage:" in result.stderr


def test_local_walltime_stops_the_ranks_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "walltime"
    result = run_script(
        [JOBS / "local" / "train.sh", "-n", "2", *SHORT_RUN, "--set", "train.steps=100000",
         "--out", run_dir],
        {"MPIPIPE_SKIP_SETUP": "1", "MPIPIPE_WALLTIME": "4"},
    )
    # mpipipe stops itself before the walltime (train.time_limit_s): exit 75, not timeout's 124.
    assert result.returncode == 75, result.stderr[-2000:]
    assert "--resume latest" in result.stderr
    assert 0 < metric_lines(run_dir) < 100000
    assert list((run_dir / "checkpoints").glob("*.h5"))


@pytest.fixture
def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN_STUB), ("scontrol", RECORDING_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_MPIRUN": str(MPIRUN), "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_PER_NODE": "2",
        "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_NUM_NODES": "1", "MPIPIPE_PYTHON": sys.executable,
    }


def calls(env) -> list[str]:
    with open(env["STUB_LOG"]) as log:
        return log.read().splitlines()


def test_slurm_script_checks_the_world_then_trains_with_srun(tmp_path, slurm_env):
    run_dir = tmp_path / "slurm"
    result = run_script([SLURM, *SHORT_RUN, "--out", run_dir], slurm_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert metric_lines(run_dir) == 3
    srun_calls = calls(slurm_env)
    assert len(srun_calls) == 2  # the world-size check, then training
    for call in srun_calls:
        for option in ("--mpi=pmix", "--ntasks-per-node=2", "--gpus-per-node=2",
                       "--gpu-bind=none", "--cpus-per-task=1", "--kill-on-bad-exit=1"):
            assert option in call.split(), call
    assert " -m mpipipe train examples/gpt_tiny.toml " in srun_calls[1]
    assert "--resume" not in srun_calls[1]


def test_slurm_script_stops_when_mpi_sees_the_wrong_world(tmp_path, slurm_env):
    result = run_script([SLURM, *SHORT_RUN, "--out", tmp_path / "never"],
                        {**slurm_env, "STUB_SINGLETONS": "1", "MPIPIPE_SRUN_MPI": "pmi2"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("mpipipe: error")]
    assert errors == [
        "mpipipe: error: MPI sees a world of 1 rank(s) but Slurm started 2 tasks: srun "
        "--mpi=pmi2 does not match this MPI; set MPIPIPE_SRUN_MPI to a plugin from "
        "`srun --mpi=list`"
    ]
    assert len(calls(slurm_env)) == 1 and not (tmp_path / "never").exists()


def test_slurm_script_requeues_after_a_checkpoint_and_resumes_on_restart(tmp_path, slurm_env):
    stopped = run_script([SLURM, *SHORT_RUN], {**slurm_env, "STUB_TRAIN_EXIT": "75"})
    assert stopped.returncode == 75
    assert "scontrol requeue 4242" in calls(slurm_env)
    assert "--out runs/gpt_tiny-4242" in calls(slurm_env)[1]

    run_dir = tmp_path / "requeued"
    restart = {**slurm_env, "STUB_TRAIN_EXIT": "0", "SLURM_RESTART_COUNT": "1"}
    fresh = run_script([SLURM, *SHORT_RUN, "--out", run_dir], restart)
    assert fresh.returncode == 0 and "finds no checkpoint" in fresh.stdout
    assert "--resume" not in calls(slurm_env)[-1]

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000007.h5").write_bytes(b"")
    resumed = run_script([SLURM, *SHORT_RUN, "--out", run_dir], restart)
    assert resumed.returncode == 0
    assert calls(slurm_env)[-1].endswith(
        f"train examples/gpt_tiny.toml --resume latest {' '.join(SHORT_RUN[1:])} --out {run_dir}"
    )


@pytest.fixture
def pbs_env(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("localhost\nlocalhost\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("qstat", QSTAT_STUB), ("qsub", RECORDING_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **OPEN_MPI_AS_ROOT, "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"), "STUB_WALLTIME": "01:00:00",
        "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "77.server", "PBS_O_WORKDIR": str(REPO),
        "MPIPIPE_PYTHON": sys.executable, "MPIPIPE_MPIEXEC_ARGS": "--oversubscribe",
    }


def test_pbs_script_trains_with_mpiexec_from_variables(tmp_path, pbs_env):
    run_dir = tmp_path / "pbs"
    arguments = " ".join(SHORT_RUN[1:])
    result = run_script(
        [PBS], {**pbs_env, "MPIPIPE_CONFIG": SHORT_RUN[0],
                "MPIPIPE_ARGS": f"{arguments} --out {run_dir}"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 nodes, 2 ranks (2 per node)" in result.stdout
    assert metric_lines(run_dir) == 3


def test_pbs_script_stops_before_the_walltime_and_submits_its_continuation(tmp_path, pbs_env):
    run_dir = tmp_path / "pbs"
    result = run_script(
        [PBS, *SHORT_RUN, "--set", "train.steps=100000", "--out", run_dir],
        {**pbs_env, "STUB_WALLTIME": "00:00:12", "MPIPIPE_STOP_BEFORE_S": "6",
         "MPIPIPE_RESUBMIT": "-q debug"},
    )
    assert result.returncode == 75, result.stdout[-2000:] + result.stderr[-2000:]
    assert 0 < metric_lines(run_dir) < 100000
    assert list((run_dir / "checkpoints").glob("*.h5"))  # saved before the time limit
    [resubmitted] = calls(pbs_env)
    assert resubmitted.startswith("qsub -q debug -v MPIPIPE_CONFIG=examples/gpt_tiny.toml,")
    assert f"--out {run_dir}" in resubmitted and "MPIPIPE_RESUME=latest" in resubmitted
    assert resubmitted.endswith(str(PBS))


@pytest.mark.parametrize(("env", "visible"), [
    ({"PALS_LOCAL_RANKID": "5", "MPIPIPE_GPUS_PER_NODE": "4"}, "1"),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "MPIPIPE_GPU_ORDER": "3,2,1,0"}, "2"),
    ({"SLURM_LOCALID": "3", "MPIPIPE_GPUS_PER_NODE": "4", "MPIPIPE_GPU_BIND": "none"}, "all"),
    ({"PALS_LOCAL_RANKID": "2", "MPIPIPE_GPUS_PER_NODE": "0"}, "all"),
], ids=["pals", "open-mpi-ordered", "bind-none", "no-gpus"])
def test_gpu_affinity_gives_each_local_rank_its_gpu(env, visible):
    clean = {key: value for key, value in os.environ.items()
             if key not in ("CUDA_VISIBLE_DEVICES", "PALS_LOCAL_RANKID",
                            "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK",
                            "SLURM_LOCALID")}
    result = subprocess.run(
        ["bash", str(GPU_AFFINITY), "bash", "-c", 'echo "${CUDA_VISIBLE_DEVICES:-all}"'],
        env={**clean, **env}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0 and result.stdout.strip() == visible


def test_gpu_check_on_a_machine_without_a_gpu_says_so_in_one_line_and_succeeds(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\nexit 9\n")  # a driver, no GPU
    (bin_dir / "nvidia-smi").chmod(0o755)
    out = tmp_path / "check"
    result = run_script([JOBS / "local" / "gpu_check.sh", "--out", out],
                        {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check"
    ]
    assert not out.exists()  # nothing was set up or run


def test_gpu_check_rejects_an_unknown_option():
    result = run_script([JOBS / "local" / "gpu_check.sh", "--quick"], {}, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr
