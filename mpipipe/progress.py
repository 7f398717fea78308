"""What rank 0 shows while training: a tqdm bar on a terminal, log lines in batch jobs."""

from __future__ import annotations

import os
import sys

from mpipipe.memory_plan.budget import gib_text

# Set by launchers; Open MPI gives every rank a pty, so isatty() cannot tell a
# terminal from a batch job's log file under mpirun.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_ID")


def wants_bar() -> bool:
    """MPIPIPE_PROGRESS=bar|log decides; otherwise a bar only on a terminal outside a launcher."""
    choice = os.environ.get("MPIPIPE_PROGRESS", "auto")
    if choice in ("bar", "log"):
        return choice == "bar"
    under_launcher = any(name in os.environ for name in LAUNCHER_VARIABLES)
    return sys.stdout.isatty() and not under_launcher


def format_row(row: dict) -> str:
    """One step's log line; the held-out loss joins it after an evaluation."""
    evaluation = f"  eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else ""
    return (
        f"step {row['step'] + 1:>6}  loss {row['loss']:.4f}{evaluation}  lr {row['lr']:.2e}  "
        f"grad_norm {row['grad_norm']:.3f}  {row['tokens_per_s']:,.0f} tok/s  "
        f"bubble {row['bubble_mean']:.1%}  {row['step_time_s'] * 1e3:.0f} ms/step"
        f"{memory_text(row)}"
    )


def memory_text(row: dict) -> str:
    """The most memory any rank held in the step, and which rank (rows of older runs lack it)."""
    if "memory_peak_bytes" not in row:
        return ""
    return f"  mem {gib_text(row['memory_peak_bytes'])} (rank {row['memory_peak_rank']})"


class Progress:
    """Rank 0 reports; other ranks stay quiet."""

    def __init__(self, total_steps: int, first_step: int, log_every: int, enabled: bool):
        self.log_every = log_every
        self.enabled = enabled
        self.last_eval: str | None = None  # the latest held-out loss, kept on the bar
        self.bar = None
        if enabled and wants_bar():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total_steps, initial=first_step, unit="step", dynamic_ncols=True
                )

    def update(self, row: dict, last: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if "eval_loss" in row:
                self.last_eval = f"{row['eval_loss']:.4f}"
            shown = {"loss": f"{row['loss']:.4f}"}
            if self.last_eval is not None:
                shown["eval_loss"] = self.last_eval
            self.bar.set_postfix(
                **shown, tok_s=f"{row['tokens_per_s']:,.0f}", bubble=f"{row['bubble_mean']:.1%}",
                mem=memory_text(row).strip().removeprefix("mem "),
            )
            self.bar.update(1)
        elif row["step"] % self.log_every == 0 or last or "eval_loss" in row:
            print(format_row(row), flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
