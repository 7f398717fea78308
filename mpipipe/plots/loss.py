"""The loss curve: every step's loss, its running mean, the held-out loss of each evaluation
(`eval_loss`, where the run evaluated), and the learning rate below."""

from __future__ import annotations

from mpipipe.plots.style import COMPUTE_COLOUR, load_pyplot, tidy

EVAL_COLOUR = "#dd8452"


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window - 1` values before it."""
    means, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        means.append(total / min(index + 1, window))
    return means


def smoothing_window(steps: int) -> int:
    """About a twentieth of the run, so the trend shows through step-to-step noise."""
    return max(1, steps // 20)


def draw_loss(rows: list[dict], title: str):
    """Loss per step (with its running mean) above the learning rate; returns the figure."""
    pyplot = load_pyplot()
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    window = smoothing_window(len(rows))
    figure, (loss_axes, lr_axes) = pyplot.subplots(
        2, 1, sharex=True, figsize=(8, 5), gridspec_kw={"height_ratios": [3, 1]}
    )
    alpha = 0.35 if window > 1 else 1.0
    loss_axes.plot(steps, losses, color=COMPUTE_COLOUR, alpha=alpha, linewidth=1, label="loss")
    if window > 1:
        loss_axes.plot(
            steps, running_mean(losses, window), color=COMPUTE_COLOUR, linewidth=2,
            label=f"running mean of {window} steps",
        )
    skipped = [(row["step"], row["loss"]) for row in rows if row.get("applied") is False]
    if skipped:
        loss_axes.scatter(
            *zip(*skipped, strict=True), marker="x", color="#c44e52", zorder=3,
            label="step skipped (non-finite)",
        )
    evaluated = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    if evaluated:
        loss_axes.plot(
            *zip(*evaluated, strict=True), color=EVAL_COLOUR, marker="o", markersize=4,
            linewidth=1.5, label="held-out loss (eval_loss)",
        )
    loss_axes.set_ylabel("loss")
    final_eval = f", held-out {evaluated[-1][1]:.3f}" if evaluated else ""
    loss_axes.set_title(
        f"{title}: loss {losses[0]:.3f} → {losses[-1]:.3f} in {len(rows)} steps{final_eval}"
    )
    loss_axes.legend(frameon=False)
    loss_axes.grid(alpha=0.3)
    lr_axes.plot(steps, [row["lr"] for row in rows], color="#55a868", linewidth=1.5)
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_axes.grid(alpha=0.3)
    for axes in (loss_axes, lr_axes):
        tidy(axes)
    figure.tight_layout()
    return figure
