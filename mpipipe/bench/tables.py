"""Markdown for each benchmark part: the tables, and the few lines that say how to read them."""

from __future__ import annotations

import statistics

from mpipipe.bench.cpu_pipeline import PipelineResult, torch_ratios
from mpipipe.bench.cpu_settings import CpuPipelineSettings
from mpipipe.bench.emulated import (
    FLAGSHIPS,
    PAPER_RATIOS,
    EmulatedResult,
    EmulatedSettings,
    FlagshipRatio,
    message_text,
)
from mpipipe.bench.gpu import FusedResult, GpuModelResult, GpuSettings
from mpipipe.bench.layers import LayerResult, LayerSettings
from mpipipe.bench.report import fraction, markdown_table, percent
from mpipipe.bench.schedule_table import ScheduleTableSettings, TablePoint, fastest_rival
from mpipipe.bench.search_cache import SKIPPED, SearchFigures
from mpipipe.errors import UsageError
from mpipipe.schedules import SCHEDULE_KINDS, check_constraints
from mpipipe.schedules.simulate import OpCosts

OVERHEAD_TARGET = 0.05
TARGET_OP_S = 0.020  # the overhead target applies where ops last this long or longer
SHORT_F0_S = 0.002  # rows with f0 up to this are summarised by their cost per op
ZB_V_TARGET = 1.04  # bitpipe-zb over zb-v at D = 8, N = 8, B = 2F


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def emulated_markdown(
    results: list[EmulatedResult], ratios: list[FlagshipRatio], settings: EmulatedSettings,
    search_note: str = "",
) -> str:
    sizes = " and ".join(message_text(size) for size in settings.message_sizes())
    latencies: dict[tuple[int, int], list[float]] = {}
    for r in results:
        latencies.setdefault((r.ranks, r.message_bytes), []).append(r.latency_s)
    latency_text = ", ".join(
        f"{min(values) * 1e3:.3f}–{max(values) * 1e3:.3f} ms for {message_text(size)} at "
        f"D={ranks}" for (ranks, size), values in sorted(latencies.items())
    )
    small = ", ".join(f"{f0:g}" for f0 in settings.small_message_f0_ms)
    first, *others = settings.profiles
    profile_text = (
        f"F,B,W = {first} at every f0"
        + (f", {' and '.join(others)} at f0 = "
           f"{', '.join(f'{f0:g}' for f0 in settings.profile_f0_ms)} ms" if others else "")
    )
    lines = [
        "### Emulated accelerator: runtime overhead against the simulator",
        "",
        "**This mode emulates compute.** Every F, B, I and W op keeps an emulated device busy "
        "for its cost while the host waits, idle but for letting MPI progress, in the engine's "
        "synchronize (as a host waiting on an accelerator does); the engine, the schedule and "
        "every message are real: MPI point-to-point messages of "
        f"{message_text(settings.message_bytes)} (d_model {settings.d_model}, sequence "
        f"{settings.seq_len}, micro-batch {settings.microbatch_size}, float32)"
        + (f", and of {message_text(settings.small_message_bytes)} at f0 = {small} ms"
           if len(settings.message_sizes()) > 1 else "")
        + ". Costs per op of one stage: F = f0·D/S, and a profile F,B,W gives B and W "
        f"relative to F (I = B − W): {profile_text}. So every schedule runs the same model, "
        "and each trains its order planned for the profile (parallel.costs = the profile). "
        "The model's parameters are one number per layer, so gradient syncs and the "
        "optimizer cost next to nothing. The simulator gets the same costs and the measured "
        "one-way message time, the faster of two measured just before and after each case "
        f"(each the fastest of 20 round trips, halved: {latency_text}). "
        f"Step: median of {settings.steps} trainer steps after {settings.warmup_steps} warm-up "
        "(forward-backward, syncs, optimizer, statistics); window: first op start to last op "
        "end over ranks. Overhead = step / simulated − 1; per op = (step − simulated) / the "
        "F, B, I and W ops of the busiest rank, the runtime's cost per op. Bare loop: the window "
        "of the same schedule run by the smallest MPI loop (`mpipipe/bench/bare_pipeline.py`: "
        "the same emulated device, receives and sends, nothing else), measured in the same "
        "run; engine per op = (window − bare loop) / the busiest rank's ops, what the engine "
        "adds over MPI itself. Bubble: mean over "
        "ranks of idle / window (measured) and idle / makespan (simulated). Search: the best "
        "makespan `mpipipe schedule search` finds for the schedule's placement (with the "
        "backward split where the schedule splits it; gpipe on 1F1B's; none for dualpipev) at "
        f"the profile, its own kind's peak memory, no message latency, "
        f"{settings.search_time_limit_s:g} s and {settings.search_workers} solver threads. "
        f"{search_note}Messages: {sizes}.",
        "",
    ]
    headers = ["D", "N", "schedule", "S", "F,B,W", "message", "F op (ms)", "step (ms)",
               "window (ms)", "bare loop (ms)", "simulated (ms)", "search (ms)", "overhead",
               "per op (µs)", "engine per op (µs)", "bubble", "simulated bubble"]
    order = {profile: place for place, profile in enumerate(settings.profiles)}
    rows = [
        [str(r.ranks), str(r.microbatches), r.schedule, str(r.stages), r.profile,
         message_text(r.message_bytes), milliseconds(r.f0_s * r.ranks / r.stages),
         milliseconds(r.step_s), milliseconds(r.window_s),
         "–" if r.bare_window_s is None else milliseconds(r.bare_window_s),
         milliseconds(r.simulated_s),
         "–" if r.search_s is None else milliseconds(r.search_s),
         percent(r.overhead), f"{r.per_op_overhead_s * 1e6:+.0f}",
         "–" if r.engine_per_op_s is None else f"{r.engine_per_op_s * 1e6:+.0f}",
         fraction(r.bubble), fraction(r.simulated_bubble)]
        for r in sorted(results, key=lambda r: (-r.message_bytes, order.get(r.profile, 0),
                                                r.f0_s, r.ranks, r.microbatches))
    ]
    lines += [markdown_table(headers, rows), "", overhead_summary(results), ""]
    short = per_op_summary(results)
    if short:
        lines += [short, ""]
    for flagship in FLAGSHIPS:
        theirs = [ratio for ratio in ratios if ratio.flagship == flagship]
        if theirs:
            lines += [flagship_markdown(flagship, theirs, settings.profiles), ""]
    return "\n".join(lines)


def overhead_summary(results: list[EmulatedResult]) -> str:
    long_ops = [r for r in results if r.f0_s * r.ranks / r.stages >= TARGET_OP_S - 1e-9]
    if not long_ops:
        return f"No case has ops of {TARGET_OP_S * 1e3:g} ms or more, where the target applies."
    worst = max(long_ops, key=lambda r: r.overhead)
    within = sum(r.overhead <= OVERHEAD_TARGET for r in long_ops)
    return (
        f"Target: overhead at most {OVERHEAD_TARGET:.0%} where every op lasts "
        f"{TARGET_OP_S * 1e3:g} ms or more. Such rows: {len(long_ops)}, {within} within target; "
        f"median overhead {percent(statistics.median(r.overhead for r in long_ops))}, worst "
        f"{percent(worst.overhead)} ({worst.schedule}, D={worst.ranks}, N={worst.microbatches})."
    )


def per_op_summary(results: list[EmulatedResult]) -> str:
    """The runtime's cost per op where ops are short, by message size."""
    parts = []
    for size in sorted({r.message_bytes for r in results}, reverse=True):
        short = [r for r in results if r.message_bytes == size and r.f0_s <= SHORT_F0_S + 1e-9]
        if not short:
            continue
        worst = max(short, key=lambda r: r.per_op_overhead_s)
        engine = [r.engine_per_op_s for r in short if r.engine_per_op_s is not None]
        parts.append(
            f"{message_text(size)}: median "
            f"{statistics.median(r.per_op_overhead_s for r in short) * 1e6:.0f} µs, worst "
            f"{worst.per_op_overhead_s * 1e6:.0f} µs ({worst.schedule}, D={worst.ranks}, "
            f"N={worst.microbatches}, f0={worst.f0_s * 1e3:g} ms)"
            + (f", of which the engine over the bare MPI loop median "
               f"{statistics.median(engine) * 1e6:.0f} µs, at most {max(engine) * 1e6:.0f} µs"
               if engine else "")
        )
    if not parts:
        return ""
    return (f"Runtime cost per op where f0 ≤ {SHORT_F0_S * 1e3:g} ms: " + "; ".join(parts)
            + ".")


def flagship_markdown(flagship: str, ratios: list[FlagshipRatio], profiles: list[str]) -> str:
    low, high = PAPER_RATIOS
    cells: dict[tuple, dict[str, FlagshipRatio]] = {}
    order = {profile: place for place, profile in enumerate(profiles)}
    for ratio in ratios:
        key = (order.get(ratio.profile, 0), ratio.profile, ratio.f0_s, ratio.ranks,
               ratio.microbatches)
        cells.setdefault(key, {})[ratio.rival] = ratio
    rivals = [rival for rival in SCHEDULE_KINDS if any(rival in row for row in cells.values())]
    rows = [
        [profile, milliseconds(f0_s), str(ranks), str(microbatches)]
        + [ratio_cell(row.get(rival)) for rival in rivals]
        for (_, profile, f0_s, ranks, microbatches), row in sorted(cells.items())
    ]
    name = "BitPipe" if flagship == "bitpipe" else flagship
    lines = [
        f"### {name}'s throughput over every other schedule (emulated)",
        "",
        f"Rival's step time / {name}'s at the same cost profile, D, N and f0, measured "
        f"(simulated in brackets); above 1, {name} is faster. The BitPipe paper reports "
        f"{low:.2f}x–{high:.2f}x over the best synchronous schedules.",
        "",
        markdown_table(["F,B,W", "f0 (ms)", "D", "N"] + [f"vs {rival}" for rival in rivals],
                       rows),
        "",
        flagship_summary(flagship, ratios),
    ]
    return "\n".join(lines)


def flagship_summary(flagship: str, ratios: list[FlagshipRatio]) -> str:
    if flagship == "bitpipe":
        low = PAPER_RATIOS[0]
        below = [ratio for ratio in ratios if ratio.measured < low]
        schedule_bound = [ratio for ratio in below if ratio.simulated < low]
        return (
            f"{len(below)} of {len(ratios)} ratios are below {low:.2f}x; in "
            f"{len(schedule_bound)} of those the simulator, with no runtime at all, puts them "
            "below too, so the schedule itself (not the runtime) sets them."
        )
    slower = [ratio for ratio in ratios if ratio.measured < 1.0]
    schedule_bound = [ratio for ratio in slower if ratio.simulated < 1.0]
    target = [ratio for ratio in ratios if ratio.rival == "zb-v" and ratio.ranks == 8
              and ratio.microbatches == 8 and ratio.profile == "1,2,1"]
    target_text = "".join(
        f" Against zb-v at D = 8, N = 8, F,B,W = 1,2,1, f0 = {ratio.f0_s * 1e3:g} ms: "
        f"{ratio.measured:.2f}x measured ({ratio.simulated:.2f}x simulated; the target is "
        f"{ZB_V_TARGET:.2f}x)."
        for ratio in target
    )
    return (
        f"{flagship} is at least as fast as the rival in {len(ratios) - len(slower)} of "
        f"{len(ratios)} measured ratios; of the {len(slower)} below 1, the simulator puts "
        f"{len(schedule_bound)} below 1 too.{target_text}"
    )


def ratio_cell(ratio: FlagshipRatio | None) -> str:
    if ratio is None:
        return "–"
    return f"{ratio.measured:.2f} ({ratio.simulated:.2f})"


def cpu_markdown(results: list[PipelineResult], settings: CpuPipelineSettings) -> str:
    by_key = {(r.framework, r.schedule): r for r in results}
    ratios = torch_ratios(results)
    sample = results[0]
    lines = [
        "### Real compute on CPU: mpipipe against PyTorch's pipelining",
        "",
        f"GPT with d_model {settings.d_model}, {settings.n_layer} blocks, {settings.n_head} "
        f"heads, sequence {settings.seq_len}, vocabulary {settings.vocab_size} (untied head), "
        f"float32; D = {sample.ranks} ranks with one core each (OMP_NUM_THREADS=1), "
        f"N = {sample.microbatches} micro-batches of {settings.microbatch_size}; AdamW, no "
        f"clipping. Throughput from the fastest of {settings.steps} optimizer steps after "
        f"{settings.warmup_steps} warm-up, each timed between barriers, mpipipe's and PyTorch's "
        "steps taken in turn. PyTorch: torch.distributed.pipelining "
        "over gloo, in the same MPI job, same model shape and initialisation scheme. First "
        "loss: the first step's mean loss, a check that both train the same model (ln "
        "vocabulary at initialisation).",
        "",
    ]
    headers = ["schedule", "mpipipe tokens/s", "PyTorch tokens/s", "mpipipe / PyTorch",
               "first loss (mpipipe / PyTorch)"]
    rows = []
    for kind in dict.fromkeys(r.schedule for r in results):
        ours, theirs = by_key.get(("mpipipe", kind)), by_key.get(("pytorch", kind))
        rows.append([
            kind,
            f"{ours.tokens_per_s:.0f}" if ours else "–",
            f"{theirs.tokens_per_s:.0f}" if theirs else "no such schedule",
            f"{ratios[kind]:.2f}" if kind in ratios else "–",
            " / ".join(f"{r.first_loss:.3f}" for r in (ours, theirs) if r is not None),
        ])
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


def layers_markdown(results: list[LayerResult], matmul_gflops: float,
                    settings: LayerSettings, threads: int, hidden: int, seq_len: int) -> str:
    lines = [
        "### Layers in one process: mpipipe (NumPy) against PyTorch eager",
        "",
        f"Forward + backward, float32, micro-batch {settings.microbatch_size}, sequence "
        f"{seq_len}, hidden {hidden}, {settings.n_head} heads, {threads} thread(s) for both "
        f"NumPy's BLAS and PyTorch; fastest run of two turns of {settings.repeats} each, "
        "mpipipe and PyTorch taking turns (whole GPT: gpt_step's best of "
        f"{settings.repeats}, then PyTorch's). GFLOP from the layers' "
        f"cost estimates; NumPy's float32 matmul on this machine: {matmul_gflops:.1f} GFLOP/s.",
        "",
    ]
    headers = ["layer", "GFLOP", "mpipipe (ms)", "mpipipe GFLOP/s", "of matmul",
               "PyTorch (ms)", "PyTorch GFLOP/s", "mpipipe speed / PyTorch"]
    rows = [
        [r.name, f"{r.gflop:.2f}", milliseconds(r.mpipipe_s), f"{r.mpipipe_gflops:.1f}",
         fraction(r.mpipipe_gflops / matmul_gflops),
         "–" if r.torch_s is None else milliseconds(r.torch_s),
         "–" if r.torch_gflops is None else f"{r.torch_gflops:.1f}",
         "–" if r.speed_vs_torch is None else f"{r.speed_vs_torch:.2f}"]
        for r in results
    ]
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


def gpu_markdown(skip_reason: str | None, device: str, settings: GpuSettings,
                 models: list[GpuModelResult], fused: list[FusedResult]) -> str:
    lines = ["### One GPU: CuPy against PyTorch eager, fused kernels against CuPy expressions", ""]
    if skip_reason is not None:
        return "\n".join(lines + [skip_reason + "."])
    lines += [
        f"{device}. GPT with d_model {settings.d_model}, {settings.n_layer} blocks, sequence "
        f"{settings.seq_len}, vocabulary {settings.vocab_size}, micro-batch "
        f"{settings.microbatch_size}, float32 (TF32 off); forward + backward, best of "
        f"{settings.repeats}. MFU: model FLOP/s over this GPU's measured float32 GEMM rate "
        f"({models[0].gemm_tflops:.1f} TFLOP/s).",
        "",
        markdown_table(
            ["implementation", "step (ms)", "tokens/s", "TFLOP/s", "MFU"],
            [[m.framework, milliseconds(m.step_s), f"{m.tokens_per_s:.0f}",
              f"{m.gflop / m.step_s / 1e3:.2f}", fraction(m.mfu)] for m in models],
        ),
        "",
        markdown_table(
            ["op", "fused (ms)", "unfused CuPy (ms)", "speed-up", "largest difference"],
            [[f.name, f"{f.fused_s * 1e3:.3f}", f"{f.unfused_s * 1e3:.3f}",
              f"{f.speedup:.2f}x", f"{f.max_abs_difference:.2e}"] for f in fused],
        ),
    ]
    return "\n".join(lines)


def schedules_markdown(
    points: list[TablePoint], bubbles: dict[str, dict[int, float]],
    settings: ScheduleTableSettings, searched: bool,
) -> str:
    kinds = [kind for kind in SCHEDULE_KINDS if any(kind in point.makespans for point in points)]
    search_text = (
        "Search: `mpipipe schedule search --placement bitpipe` with (`--split`, for bitpipe-zb) "
        f"and without (for bitpipe) the split, {settings.time_limit_s:g} s and "
        f"{settings.workers} solver threads each, at most D micro-batches of L/D layers per "
        "rank: its best order and the proven lower bound on any order's makespan (= best where "
        "proven optimal). zb/best: bitpipe-zb's makespan over the split search's best; bp/best "
        "the same for bitpipe."
        if searched else f"No search columns: {SKIPPED}."
    )
    lines = [
        "### Every schedule against the search's best order (simulated)",
        "",
        "Makespan of one step in units of one 1F1B stage's forward, every schedule planned "
        "for the costs it is simulated with, on the same model (costs per op scaled by D/S), "
        f"no message latency. {search_text}",
        "",
    ]
    headers = ["D", "N", "F,B,W", *kinds, "split best", "split bound", "zb/best",
               "whole best", "whole bound", "bp/best"]
    rows = []
    for point in points:
        rows.append([
            str(point.ranks), str(point.microbatches), point.profile,
            *(f"{point.makespans[kind]:g}" if kind in point.makespans else "—" for kind in kinds),
            *search_cells(point.makespans["bitpipe-zb"], point.split),
            *search_cells(point.makespans["bitpipe"], point.whole),
        ])
    lines.append(markdown_table(headers, rows))
    lines.append("")
    lines.append(schedules_summary(points))
    lines += ["", bubble_markdown(bubbles, settings)]
    return "\n".join(lines)


def search_cells(makespan: float, figures: SearchFigures | None) -> list[str]:
    if figures is None:
        return ["—", "—", "—"]
    return [f"{figures.best:g}", f"{figures.bound:g}", f"{makespan / figures.best:.3f}"]


def schedules_summary(points: list[TablePoint]) -> str:
    beaten = [point for point in points
              if point.makespans["bitpipe-zb"] > fastest_rival(point)[1]]
    summary = (f"bitpipe-zb is the fastest schedule at {len(points) - len(beaten)} of "
               f"{len(points)} points")
    searched = [point for point in points if point.split is not None]
    if not searched:
        return summary + "."
    missed = [point for point in searched
              if point.makespans["bitpipe-zb"] > 1.03 * point.split.best]
    long_plain = [point for point in searched if point.microbatches > point.ranks]
    plain_missed = [point for point in long_plain
                    if point.makespans["bitpipe"] > 1.03 * point.whole.best]
    worst_gap = max(searched, key=lambda point: point.split.gap)
    worst_whole = max(searched, key=lambda point: point.whole.gap)
    return (
        f"{summary} and within 3% of the split search's best at "
        f"{len(searched) - len(missed)}; plain bitpipe is within 3% of its own search's best at "
        f"{len(long_plain) - len(plain_missed)} of the {len(long_plain)} points with N > D. "
        f"Largest gap between the split search's best and its bound: "
        f"{fraction(worst_gap.split.gap)} (D={worst_gap.ranks}, N={worst_gap.microbatches}, "
        f"F,B,W={worst_gap.profile}); the whole-backward search's: "
        f"{fraction(worst_whole.whole.gap)} (D={worst_whole.ranks}, "
        f"N={worst_whole.microbatches}, F,B,W={worst_whole.profile})."
    )


# What DESIGN.md's baseline formulas give where they exist (F = B unless said).
BUBBLE_FORMULAS = {
    "gpipe": "(D−1)/(N+D−1)",
    "1f1b": "(D−1)/(N+D−1)",
    "interleaved": "(D−1)/(vN+D−1)",
    "chimera": "(D−2)/(2N+D−2)",
    "bitpipe": "(D−2)/(4N+D−2) for the reference order; (D−2)/(3N+D−2) at N = D, B = 2F",
    "zb-h1": "—",
    "zb-v": "≈ 0 when F = I = W",
    "bitpipe-zb": "—",
    "dualpipev": "(D−1)/(6N+D−1) when F = I = W",
}


def bubble_markdown(bubbles: dict[str, dict[int, float]], settings: ScheduleTableSettings) -> str:
    ranks = settings.bubble_ranks
    costs = OpCosts.parse(settings.bubble_costs)
    columns = sorted({n for by_n in bubbles.values() for n in by_n})
    multiples = " ".join(str(n) for n in columns)
    rows = []
    for kind, by_n in bubbles.items():
        cells = [f"{by_n[n]:.3f}" if n in by_n else _cannot_run(kind, ranks, n)
                 for n in columns]
        name = f"{kind} (v = 2)" if kind == "interleaved" else kind
        rows.append([name, *cells, BUBBLE_FORMULAS.get(kind, "—")])
    return "\n".join([
        "### Every schedule's bubble (simulated)",
        "",
        f"Simulated bubble (idle / makespan, mean over ranks), D = {ranks}, "
        f"F = {costs.forward:g}, B = {costs.backward:g} (I = {costs.backward_input:g}, "
        f"W = {costs.backward_weight:g}), every schedule on the same model (`--same-model`), "
        f"the computed orders planned for these costs: `mpipipe schedule all -D {ranks} -N "
        f"{multiples} --cost {settings.bubble_costs} --same-model`.",
        "",
        markdown_table(["schedule", *(f"N = {n}" for n in columns), "formula (F = B)"], rows),
    ])


def _cannot_run(kind: str, ranks: int, microbatches: int) -> str:
    try:
        check_constraints(kind, ranks, microbatches)
    except UsageError as error:
        reason = str(error).split(": ", 1)[-1].split(" (")[0].removeprefix(f"{kind} ")
        return f"— ({reason})"
    return "—"
