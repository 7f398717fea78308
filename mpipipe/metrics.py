"""metrics.jsonl: one JSON object per step, written by rank 0."""

from __future__ import annotations

import json
import os


class MetricsWriter:
    def __init__(self, path: str | None, append: bool = False):
        # A fresh run starts a fresh file; a resumed run continues it.
        self.handle = open(path, "a" if append else "w") if path else None  # noqa: SIM115

    def write(self, row: dict) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every row of RUN_DIR/metrics.jsonl, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]
