"""Which schedule a checkpoint was trained with, and whether a resume may change it.

Every schedule computes the same numbers, so a checkpoint resumes under any
schedule, generator or file (resharding). What is refused is a schedule file
whose name is the checkpoint's but whose ops are not: the file was edited
since, and the run would go on with another schedule without having said so.
Giving the edited file another name says so.
"""

from __future__ import annotations

import os

from mpipipe.errors import UsageError
from mpipipe.plan import RunPlan
from mpipipe.schedules import SCHEDULE_KINDS

SOURCE_ATTRIBUTE = "schedule_source"  # parallel.schedule: a generator or a file's path
DIGEST_ATTRIBUTE = "schedule_digest"  # Schedule.digest() of the ops


def schedule_attributes(plan: RunPlan) -> dict[str, str]:
    return {
        SOURCE_ATTRIBUTE: plan.config.parallel.schedule,
        DIGEST_ATTRIBUTE: plan.schedule.digest(),
    }


def schedule_change(attributes, path: str, plan: RunPlan) -> str:
    """'' when `plan` runs the checkpoint's ops; else a note saying what changed.

    Raises UsageError when the checkpoint's schedule file, by name, now holds other ops.
    """
    saved_source = attributes.get(SOURCE_ATTRIBUTE)
    saved_digest = attributes.get(DIGEST_ATTRIBUTE)
    if saved_source is None or saved_digest is None:
        return ""  # written before checkpoints recorded their schedule
    saved_source, saved_digest = str(saved_source), str(saved_digest)
    source, digest = plan.config.parallel.schedule, plan.schedule.digest()
    if digest == saved_digest:
        return ""
    if _is_file(saved_source) and _is_file(source) and (
        os.path.basename(saved_source) == os.path.basename(source)
    ):
        raise UsageError(
            f"checkpoint {path} was trained with parallel.schedule {saved_source!r} (ops "
            f"{saved_digest}), but {source!r} now holds other ops ({digest}): restore the file, "
            "or give the edited one another name in parallel.schedule to go on with it"
        )
    return (
        f"note: the checkpoint was trained with schedule {saved_source} (ops {saved_digest}), "
        f"this run uses {source} (ops {digest}): the same numbers, up to the rounding of the "
        "gradient sums"
    )


def _is_file(source: str) -> bool:
    return source not in SCHEDULE_KINDS
