#!/usr/bin/env python3
"""Turn a ``pytest bench`` run (pytest-benchmark's JSON) and a ``bench/skip_models.py --json`` run
into ``report.md`` (a table per benchmark group, a summary, the training-step table) and plots.

    python bench/report.py [RUN.json] [--skip-json SKIP.json] [--out DIR] [--plots DIR]
    # defaults: bench/out/run.json, bench/out/skip_models.json (if present), bench/out/, --out

Plots (matplotlib; skipped with a message without it), each captioned with the run it came from
(file, date, machine, versions, command): ``bench_per_call.png`` (ours eager / upstream eager per
call, with its spread, per case), ``bench_implementations.png`` (every implementation against
upstream eager), ``skip_training_step.png`` (time per training step of every skip_models variant).

Every time shown is what pytest-benchmark measured (its ``stats``: median and interquartile range
per call), except the CUDA-only "device time" column, which is ``triton.testing.do_bench``'s median
(``extra_info["device_s"]``). Speed-ups are ratios of medians: on CUDA of device times, elsewhere of
the table's medians. On CPU, ours eager also carries the interleaved comparison with upstream eager
(``extra_info["vs_upstream_eager"]``, per thread count: median and quartiles of per-block ratios).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from structprune_triton.timing import Spread

HERE = Path(__file__).resolve().parent
IMPL_ORDER = ["upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "copy"]
OP_ORDER = ["fss_fwd", "fss_fwdbwd", "bias_hook", "linear_fwd", "linear_fwdbwd", "conv2d_fwd", "conv2d_fwdbwd"]
SLOWDOWN_LIMIT = 1.10  # ours eager may take at most this times upstream eager's time on CPU


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}x"


def fmt_spread(r: dict) -> str:
    """``0.98x [0.95-1.01] same``: median [quartiles] of upstream time / ours; "same" when they hold 1."""
    return str(Spread(r["median"], r["q1"], r["q3"]))


class Entry:
    """One benchmark of the JSON: an implementation on a case."""

    def __init__(self, bench: dict) -> None:
        self.group = bench.get("group") or bench.get("name", "?")
        self.extra = bench.get("extra_info") or {}
        self.stats = bench.get("stats") or {}
        self.impl = self.extra.get("impl") or bench.get("name", "?")
        self.op = self.extra.get("op") or self.group.split(" | ")[0]
        self.median = self.stats.get("median")
        self.iqr = self.stats.get("iqr")
        self.device = self.extra.get("device_s")
        self.time = self.device if self.device is not None else self.median  # what speed-ups compare
        self.interleaved: dict = self.extra.get("vs_upstream_eager") or {}
        self.interleaved_upstream_zeros: dict = self.extra.get("vs_upstream_eager exact_zeros=False") or {}

    def notes(self) -> str:
        parts = []
        if self.extra.get("ours_path"):
            parts.append(f"path={self.extra['ours_path']}")
        if self.extra.get("graphs") is not None:
            parts.append(f"graphs/breaks {self.extra['graphs']}/{self.extra.get('graph_breaks', 0)}")
        return ", ".join(parts)


def group_entries(data: dict) -> dict[str, list[Entry]]:
    """Groups in op order (then run order), implementations in IMPL_ORDER."""
    groups: dict[str, list[Entry]] = {}
    for e in (Entry(b) for b in data.get("benchmarks", [])):
        groups.setdefault(e.group, []).append(e)

    def rank(key: str, order: list[str]) -> int:
        return order.index(key) if key in order else len(order)

    names = sorted(groups, key=lambda g: (rank(groups[g][0].op, OP_ORDER), list(groups).index(g)))
    return {g: sorted(groups[g], key=lambda e: (rank(e.impl, IMPL_ORDER), e.impl)) for g in names}


def speedup(base: Entry | None, e: Entry | None) -> float | None:
    if base is None or e is None or not base.time or not e.time:
        return None
    return base.time / e.time


def header(data: dict) -> list[str]:
    m = (data.get("machine_info") or {}).get("structprune_bench") or {}
    facts = [f"{k}: {m[k]}" for k in ("device", "kernels", "versions") if m.get(k)]
    if m.get("copy_gbps"):
        facts.append(f"copy bandwidth (same run): {m['copy_gbps']:.4g} GB/s")
    facts.append(f"compile backend: {m.get('compile_backend', '?')}" + (", quick mode" if m.get("quick") else ""))
    commit = (data.get("commit_info") or {}).get("id")
    facts.append(f"run {data.get('datetime', '?')}" + (f", commit {commit[:12]}" if commit else ""))
    return ["# structprune_triton benchmark report", "", *[f"- {f}" for f in facts], ""]


def legend(cuda: bool) -> list[str]:
    basis = "do_bench device times" if cuda else "table medians"
    return [
        "**median [IQR]**: pytest-benchmark's median time per call and interquartile range (CPU: process CPU time; "
        "CUDA: host wall time of one call and a synchronize)."
        + (" **device time**: `triton.testing.do_bench` median (CUDA events, L2 flushed)." if cuda else ""),
        f"**× vs upstream eager / compiled**: that implementation's time / this one's, from {basis} (above 1: "
        "faster). **GB/s**: bytes this implementation must move over its time (a dense pass reads and writes every "
        "element once; the Triton row-mask kernel reads only live rows); **% copy**: that over the copy bandwidth "
        "measured in the same run (small CPU tensors sit in cache and can exceed 100%). **TFLOP/s**: matmul or "
        "convolution work over time. **graphs/breaks**: FX graphs Dynamo handed the compile backend for this "
        "compiled object, and graph breaks (1/0: one whole graph).",
        "",
    ]


def summary(groups: dict[str, list[Entry]], threads: list[str]) -> list[str]:
    cols = ["group", "upstream eager", "ours eager", "upstream / ours"]
    cols += [f"interleaved, {n} thread{'s' * (n != '1')}" for n in threads]
    zeros = [n for n in threads if any(e.interleaved_upstream_zeros.get(n) for es in groups.values() for e in es)]
    cols += [f"exact_zeros=False, {n} thread{'s' * (n != '1')}" for n in zeros]
    cols += ["upstream compiled", "ours compiled", "upstream compiled / ours compiled"]
    lines = ["## Summary", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    slow = []
    for g, es in groups.items():
        by = {e.impl: e for e in es}
        ue, uc, oe, oc = (by.get(k) for k in ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled"))
        row = [g.replace("|", "\\|"), fmt_time(ue and ue.time), fmt_time(oe and oe.time), fmt_ratio(speedup(ue, oe))]
        for n in threads:
            r = oe.interleaved.get(n) if oe else None
            row.append(fmt_spread(r) if r else "")
            if r and r["median"] < 1 / SLOWDOWN_LIMIT:
                slow.append(f"{g} ({n} thread(s): {1 / r['median']:.2f}x upstream's time)")
        for n in zeros:
            r = oe.interleaved_upstream_zeros.get(n) if oe else None
            row.append(fmt_spread(r) if r else "")
        row += [fmt_time(uc and uc.time), fmt_time(oc and oc.time), fmt_ratio(speedup(uc, oc))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if threads:
        lines += [
            "*interleaved*: ours eager and upstream eager timed by `torch.utils.benchmark.Timer` (process CPU time) in "
            "alternating blocks within one test, at each thread count; median [quartiles] over blocks of upstream's "
            "time / ours, 'same' when the quartiles hold 1.0. It is the figure judged against the "
            f"{SLOWDOWN_LIMIT:.2f}x limit. *exact_zeros=False*: the same, ours run under "
            "`structprune_triton.settings(exact_zeros=False)` (upstream's `mask * x` on the torch path; row-mask "
            "cases only), timed in the same blocks.",
            "",
            f"{len(slow)} case(s) where ours eager takes more than {SLOWDOWN_LIMIT:.2f}x upstream eager's time"
            + (": " + "; ".join(slow) if slow else "")
            + ".",
            "",
        ]
    return lines


def group_table(g: str, es: list[Entry], copy_gbps: float | None, cuda: bool) -> list[str]:
    by = {e.impl: e for e in es}
    has_bw = any(e.extra.get("bytes") for e in es)
    has_flops = any(e.extra.get("flops") for e in es)
    cols = ["implementation", "median [IQR]"] + (["device time"] if cuda else [])
    cols += ["× vs upstream eager", "× vs upstream compiled"] + (["GB/s", "% copy"] if has_bw else [])
    cols += (["TFLOP/s"] if has_flops else []) + ["notes"]
    lines = [f"## {g}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in es:
        row = [e.impl, f"{fmt_time(e.median)} [{fmt_time(e.iqr)}]"] + ([fmt_time(e.device)] if cuda else [])
        row += [fmt_ratio(speedup(by.get("upstream-eager"), e)), fmt_ratio(speedup(by.get("upstream-compiled"), e))]
        if has_bw:
            gbps = e.extra["bytes"] / e.time / 1e9 if e.extra.get("bytes") and e.time else None
            row += [f"{gbps:.4g}" if gbps else "", f"{100 * gbps / copy_gbps:.3g}%" if gbps and copy_gbps else ""]
        if has_flops:
            row.append(f"{e.extra['flops'] / e.time / 1e12:.3g}" if e.extra.get("flops") and e.time else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [*row, e.notes()]) + " |")
    return [*lines, ""]


def render_markdown(data: dict, groups: dict[str, list[Entry]], images: list[str]) -> str:
    m = (data.get("machine_info") or {}).get("structprune_bench") or {}
    cuda = any(e.device is not None for es in groups.values() for e in es)
    threads = sorted({n for es in groups.values() for e in es for n in e.interleaved}, key=int)
    lines = header(data) + [*images, ""] * bool(images) + legend(cuda) + summary(groups, threads)
    for g, es in groups.items():
        lines += group_table(g, es, m.get("copy_gbps"), cuda)
    return "\n".join(lines)


def shown(path: Path) -> str:
    """``path`` as the caption names it: relative to the repository root when inside it."""
    path = path.resolve()
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


def caption(path: Path, data: dict) -> str:
    """The run a bench plot comes from: file, date, commit, machine, versions, command."""
    m = (data.get("machine_info") or {}).get("structprune_bench") or {}
    commit = ((data.get("commit_info") or {}).get("id") or "")[:10]
    parts = [f"run {shown(path)}", data.get("datetime", "?")[:16].replace("T", " ") + " UTC"]
    parts += [f"commit {commit}"] if commit else []
    parts += [m.get("device", "?"), m.get("versions", "?"), f"compile backend {m.get('compile_backend', '?')}"]
    return "; ".join(parts) + f"; command: {m.get('command', 'python -m pytest bench')}"


def per_call_rows(groups: dict[str, list[Entry]]) -> tuple[list[tuple[str, dict]], str]:
    """Per case, ours eager against upstream eager: the interleaved spreads (CPU), else the ratio of
    the two medians (CUDA: device times), as a spread of one value."""
    rows, interleaved = [], False
    for g, es in groups.items():
        by = {e.impl: e for e in es}
        ours = by.get("ours-eager")
        if ours is None:
            continue
        series = {}
        for key, label in (
            (ours.interleaved, "{n} thread(s)"),
            (ours.interleaved_upstream_zeros, "exact_zeros=False, {n} thread(s)"),
        ):
            for n, r in key.items():
                series[label.format(n=n)] = (r["median"], r["q1"], r["q3"])
        interleaved |= bool(series)
        s = speedup(by.get("upstream-eager"), ours)
        if not series and s is not None:
            series["ratio of medians"] = (s, s, s)
        if series:
            rows.append((g.replace(" | ", ", "), series))
    how = "interleaved blocks, process CPU time" if interleaved else "ratio of medians"
    return rows, f"ours eager vs upstream eager, per call ({how})"


def draw(
    groups: dict[str, list[Entry]], data: dict, run_path: Path, skip: tuple[Path, dict] | None, plots: Path
) -> list[tuple[Path, str]]:
    """Write the PNGs; returns (path, caption) of each."""
    try:
        import report_plots
    except ImportError:
        print(f"matplotlib is not installed: no plots written to {plots}")
        return []
    out = []
    cap = caption(run_path, data)
    rows, title = per_call_rows(groups)
    if rows:
        out.append((report_plots.per_call(rows, title, cap, plots / "bench_per_call.png"), cap))
    ops: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for g, es in groups.items():
        op = es[0].op if es[0].op in ("fss_fwd", "fss_fwdbwd", "bias_hook") else "layers"
        base = next((e for e in es if e.impl == "upstream-eager"), None)
        speedups = {e.impl: s for e in es if e is not base and (s := speedup(base, e)) is not None}
        ops.setdefault(op, []).append((g.split(" | ", 1)[-1].replace(" | ", "\n"), speedups))
    impls = [i for i in IMPL_ORDER[1:] if any(e.impl == i for es in groups.values() for e in es)]
    out.append((report_plots.implementations(ops, impls, cap, plots / "bench_implementations.png"), cap))
    if skip:
        import skip_models

        cap = f"run {shown(skip[0])}; {skip_models.describe(skip[1])}"
        out.append((report_plots.training_steps(skip[1], cap, plots / "skip_training_step.png"), cap))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="?", default=HERE / "out" / "run.json", help="pytest-benchmark JSON")
    ap.add_argument(
        "--skip-json", type=Path, help="a `skip_models.py --json` run (default: bench/out/skip_models.json if present)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "out", help="directory of report.md (default: bench/out)")
    ap.add_argument("--plots", type=Path, help="directory of the PNGs (default: --out)")
    ap.add_argument("--no-png", action="store_true", help="write only report.md")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    groups = group_entries(data)
    if not groups:
        print(f"{args.json}: no benchmarks in this file (was it run with --benchmark-disable?)", file=sys.stderr)
        return 1
    skip_path = args.skip_json or (HERE / "out" / "skip_models.json")
    skip = (skip_path, json.loads(skip_path.read_text())) if args.skip_json or skip_path.exists() else None
    args.out.mkdir(parents=True, exist_ok=True)
    plots = args.plots or args.out
    images = [] if args.no_png else draw(groups, data, args.json, skip, plots)
    links = [f"![{cap}]({os.path.relpath(p, args.out)})" for p, cap in images]
    md = render_markdown(data, groups, links)
    if skip:
        import skip_models

        run = skip[1]
        md += f"\n## Training step ({run['threads']} torch thread(s)): `{run['command']}`\n\n"
        md += "\n".join(skip_models.table(run)) + "\n"
    (args.out / "report.md").write_text(md + "\n")
    print(f"wrote {args.out / 'report.md'} ({len(groups)} groups)")
    for p, _ in images:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
