"""PyTorch's own schedule files, written by torch 2.13's schedule classes, and its verdicts.

    .venv/bin/python tests/torch_fixtures.py        # rewrites tests/fixtures/torch_schedules/

For each of torch's seven schedule classes and each size (D, N) it writes
`{Class}_D{D}_N{N}_compute_only.csv` with torch's `_dump_csv` (GPipe and
1F1B have no `_dump_csv`, so torch's PipelineScheduleMulti one writes their
`pipeline_order`) and, for the classes with a runtime lowering,
`..._compute_comms.csv`. verdicts.json records whether torch's own checks
accept each file as torch reads it back (`_validate_schedule`, and for
compute_comms `_simulate_comms_compute`), and the first line of what they
say when they do not.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch_schedules"
VERDICTS = "verdicts.json"
CLASSES = (
    "ScheduleGPipe",
    "Schedule1F1B",
    "ScheduleInterleaved1F1B",
    "ScheduleLoopedBFS",
    "ScheduleInterleavedZeroBubble",
    "ScheduleZBVZeroBubble",
    "ScheduleDualPipeV",
)
SINGLE_STAGE = ("ScheduleGPipe", "Schedule1F1B")  # one stage per rank
V_SHAPED = ("ScheduleZBVZeroBubble", "ScheduleDualPipeV")  # rank r: stages r and 2D-1-r
SIZES = ((2, 4), (4, 8))  # (D, N)


class StageStub:
    """What torch's schedule constructors read from a pipeline stage; no model, no process group."""

    def __init__(self, stage_index: int, num_stages: int, ranks: int):
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.group_size = ranks
        self.group_rank = 0
        self.submod = None
        self.is_first = stage_index == 0
        self.is_last = stage_index == num_stages - 1


def torch_schedule(name: str, ranks: int, microbatches: int):
    """Torch's schedule object of class `name` as rank 0 of `ranks` builds it."""
    from torch.distributed.pipelining import schedules

    schedule_class = getattr(schedules, name)
    if name in SINGLE_STAGE:
        return schedule_class(StageStub(0, ranks, ranks), microbatches)
    stages = 2 * ranks
    second = stages - 1 if name in V_SHAPED else ranks
    return schedule_class([StageStub(0, stages, ranks), StageStub(second, stages, ranks)],
                          microbatches)


def fixture_name(name: str, ranks: int, microbatches: int, form: str) -> str:
    return f"{name}_D{ranks}_N{microbatches}_{form}.csv"


def write_fixtures(directory: Path) -> dict[str, dict]:
    """Write every fixture and verdicts.json into `directory`; returns the verdicts."""
    from torch.distributed.pipelining import schedules

    directory.mkdir(parents=True, exist_ok=True)
    verdicts = {}
    for name in CLASSES:
        for ranks, microbatches in SIZES:
            schedule = torch_schedule(name, ranks, microbatches)
            forms = ("compute_only",) if name in SINGLE_STAGE else ("compute_only", "compute_comms")
            for form in forms:
                path = directory / fixture_name(name, ranks, microbatches, form)
                if name in SINGLE_STAGE:
                    schedules.PipelineScheduleMulti._dump_csv(schedule, str(path))
                else:
                    schedule._dump_csv(str(path), format=form)
                stages = schedule._num_stages
                verdicts[path.name] = {
                    "class": name, "ranks": ranks, "microbatches": microbatches, "format": form,
                    **_verdict(path, ranks, stages, microbatches, form),
                }
    (directory / VERDICTS).write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
    return verdicts


def read_torch_csv(path: Path) -> dict[int, list]:
    """The file as torch's `_load_csv` parses it: rank -> its actions (None for empty cells)."""
    from torch.distributed.pipelining.schedules import _Action

    with open(path, newline="") as file:
        return {rank: [_Action.from_str(cell) for cell in row]
                for rank, row in enumerate(csv.reader(file))}


def _verdict(path: Path, ranks: int, stages: int, microbatches: int, form: str) -> dict:
    """Torch's checks of the file: `_validate_schedule`, then for compute_comms its dry run."""
    from torch.distributed.pipelining import schedules

    actions = read_torch_csv(path)
    try:
        stage_to_rank = schedules._validate_schedule(actions, ranks, stages, microbatches)
        if form == "compute_comms":
            torch_dry_run(actions, stage_to_rank, stages)
    except (AssertionError, ValueError, RuntimeError) as error:
        return {"torch_accepts": False, "torch_says": str(error).splitlines()[0]}
    return {"torch_accepts": True, "torch_says": ""}


def torch_dry_run(actions: dict[int, list], stage_to_rank: dict[int, int], stages: int) -> None:
    """Torch's `_simulate_comms_compute` of a compute_comms schedule; raises if it is stuck.

    It refuses UNSHARD, RESHARD and REDUCE_GRAD, which no other action waits
    for, so they are left out, and cannot place an OVERLAP_F_B, which runs as
    its sub-actions in order (as torch's runtime runs it without an overlap function).
    """
    from torch.distributed.pipelining import schedules

    skipped = (schedules.UNSHARD, schedules.RESHARD, schedules.REDUCE_GRAD)
    compute_and_comms = {
        rank: [
            part
            for action in row
            if action is not None
            for part in (action.sub_actions or (action,))
            if part.computation_type not in skipped
        ]
        for rank, row in actions.items()
    }
    with contextlib.redirect_stdout(io.StringIO()):
        schedules._simulate_comms_compute(compute_and_comms, stage_to_rank.__getitem__, stages)


if __name__ == "__main__":
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("needs torch 2.13.0: .venv/bin/python -m pip install torch==2.13.0")
    written = write_fixtures(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
    print(f"wrote {len(written)} files and {VERDICTS}")
