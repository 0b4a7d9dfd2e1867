"""The figures of ``bench/report.py`` (matplotlib, drawn off-screen). Each function takes plain data
prepared by the report and a caption naming the run it came from (file, date, machine, versions,
command), which is printed under the plot, and writes one PNG."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Spread = tuple[float, float, float]  # median, first quartile, third quartile


def _caption(fig, caption: str, width: int) -> None:
    """The caption under the axes; call after everything else is laid out."""
    lines = textwrap.wrap(caption, width)
    bottom = (0.15 + 0.12 * len(lines)) / fig.get_figheight()  # inches of caption, as a figure fraction
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, va="bottom", ha="left", family="monospace")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _caption_inches(caption: str, width: int) -> float:
    return 0.15 + 0.12 * len(textwrap.wrap(caption, width))


RATIO_LIMITS = (0.25, 4.0)  # ratio axes stop here: a spread wider than that is noise, drawn to the edge


def _ratio_axis(axis, values: list[float]) -> tuple[float, float]:
    """A log axis over ``values`` and 1.0 (within RATIO_LIMITS), labelled with plain ratios;
    returns its limits."""
    lo = max(min([*values, 1.0]) / 1.15, RATIO_LIMITS[0])
    hi = min(max([*values, 1.0]) * 1.15, RATIO_LIMITS[1])
    ticks = [t for t in (0.25, 0.5, 0.8, 1, 1.25, 2, 4) if lo <= t <= hi]
    axis.set_ticks(ticks, labels=[f"{t:g}" for t in ticks], minor=False, fontsize=8)
    axis.set_ticks([], minor=True)
    return lo, hi


def per_call(rows: list[tuple[str, dict[str, Spread]]], title: str, caption: str, path: Path) -> Path:
    """One line per case: for every series (thread count, setting), upstream's time / ours as a point
    at the median with a bar over the quartiles; log scale, 1.0 marked (right of it: ours faster)."""
    series = list(dict.fromkeys(s for _, by in rows for s in by))
    n, k = len(rows), max(1, len(series))
    fig, ax = plt.subplots(figsize=(11, 0.3 * n * max(1, k / 2) + 1.2 + _caption_inches(caption, 150)))
    step = 0.8 / k
    for si, name in enumerate(series):
        ys, xs, lo, hi = [], [], [], []
        for ri, (_, by) in enumerate(rows):
            if name in by:
                med, q1, q3 = by[name]
                ys.append(n - 1 - ri + (k - 1) / 2 * step - si * step)
                xs.append(med)
                lo.append(med - q1)
                hi.append(q3 - med)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, color=f"C{si}", label=name)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(*_ratio_axis(ax.xaxis, [v for _, by in rows for t in by.values() for v in t]))
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(range(n))
    ax.set_yticklabels([label for label, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel(
        "upstream eager time / ours (median, bar: quartiles, cut at the edges); right of 1: ours faster", fontsize=8
    )
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _caption(fig, caption, 150)
    return _save(fig, path)


def implementations(
    ops: dict[str, list[tuple[str, dict[str, float]]]], impls: list[str], caption: str, path: Path
) -> Path:
    """One panel per op: for every case, each implementation's speed-up over upstream eager as a bar
    from 1.0 (up: faster)."""
    height = 3.2 * len(ops) + 0.4 + _caption_inches(caption, 150)
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, height), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, (op, cases) in zip(axes[:, 0], ops.items(), strict=True):
        for ci, (_, speedups) in enumerate(cases):
            for ii, impl in enumerate(impls):
                if impl in speedups:
                    x = ci + (ii - (len(impls) - 1) / 2) * width
                    bar = speedups[impl] - 1.0  # from 1.0 up or down: a log axis has no zero
                    ax.bar(x, bar, width, bottom=1.0, color=f"C{ii}", label=impl if ci == 0 else None)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(*_ratio_axis(ax.yaxis, [v for _, by in cases for v in by.values()]))
        ax.set_title(f"{op}: x vs upstream eager (higher is faster)", fontsize=10, loc="left")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([label for label, _ in cases], fontsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _caption(fig, caption, 150)
    return _save(fig, path)


def training_steps(run: dict, caption: str, path: Path) -> Path:
    """One panel per model of a ``skip_models.py --json`` run: median time per training step of every
    variant (bar: quartiles), with the per-round speed-up over the baseline written above each bar."""
    cases, variants, baseline = run["cases"], run["variants"], run["baseline"]
    ncols = min(3, len(cases))
    nrows = math.ceil(len(cases) / ncols)
    height = 3.4 * nrows + 0.6 + _caption_inches(caption, 140)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, height), squeeze=False)
    for ax in axes.flat[len(cases) :]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases, strict=False):
        names = [v for v in variants if v in case["times_s"]]
        meds, lo, hi = [], [], []
        for v in names:
            med, q1, q3 = (case["step_s"][v][k] for k in ("median", "q1", "q3"))
            meds.append(med * 1e3)
            lo.append((med - q1) * 1e3)
            hi.append((q3 - med) * 1e3)
        ax.bar(range(len(names)), meds, yerr=[lo, hi], capsize=3, color=[f"C{i}" for i in range(len(names))])
        for i, v in enumerate(names):
            s = case["vs_baseline"].get(v)
            text = "baseline" if v == baseline else (f"{s['median']:.2f}x" if s else "")
            ax.annotate(text, (i, meds[i] + hi[i]), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")  # fmt: skip
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        ax.set_ylabel("ms per training step", fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(case["name"], 45)), fontsize=8, loc="left")
        ax.set_ylim(0, max(m + h for m, h in zip(meds, hi, strict=True)) * 1.15)
    fig.suptitle(f"Training step, {run['threads']} torch thread(s); x: speed-up over {baseline}", fontsize=10)
    _caption(fig, caption, 140)
    return _save(fig, path)
