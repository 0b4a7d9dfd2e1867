#!/usr/bin/env python3
"""Turn a ``pytest bench`` run (pytest-benchmark's JSON) into ``report.md`` (a table per benchmark
group, and a summary) and ``report.png`` (speed-ups; skipped with a message without matplotlib).

    python bench/report.py [RUN.json] [--out DIR]      # defaults: bench/out/run.json, bench/out/

Needs only the standard library (and matplotlib for the PNG): it runs anywhere the JSON is.

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
import sys
from pathlib import Path

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
    verdict = "same" if r["q1"] <= 1.0 <= r["q3"] else ("faster" if r["median"] > 1 else "slower")
    return f"{r['median']:.2f}x [{r['q1']:.2f}-{r['q3']:.2f}] {verdict}"


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


def render_markdown(data: dict, groups: dict[str, list[Entry]]) -> str:
    m = (data.get("machine_info") or {}).get("structprune_bench") or {}
    cuda = any(e.device is not None for es in groups.values() for e in es)
    threads = sorted({n for es in groups.values() for e in es for n in e.interleaved}, key=int)
    lines = header(data) + legend(cuda) + summary(groups, threads)
    for g, es in groups.items():
        lines += group_table(g, es, m.get("copy_gbps"), cuda)
    return "\n".join(lines)


def render_png(groups: dict[str, list[Entry]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping {path}")
        return False
    by_op: dict[str, list[tuple[str, list[Entry]]]] = {}
    for g, es in groups.items():
        op = es[0].op if es[0].op in ("fss_fwd", "fss_fwdbwd", "bias_hook") else "layers"
        by_op.setdefault(op, []).append((g, es))
    impls = [i for i in IMPL_ORDER if any(e.impl == i for es in groups.values() for e in es)]
    fig, axes = plt.subplots(len(by_op), 1, figsize=(12, 3.4 * len(by_op) + 0.6), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, (op, glist) in zip(axes[:, 0], by_op.items(), strict=True):
        for gi, (_, es) in enumerate(glist):
            base = next((e for e in es if e.impl == "upstream-eager"), None)
            for ii, impl in enumerate(impls):
                s = speedup(base, next((e for e in es if e.impl == impl), None))
                if s is not None:
                    ax.bar(
                        gi + (ii - (len(impls) - 1) / 2) * width,
                        s,
                        width,
                        color=f"C{ii}",
                        label=impl if gi == 0 else None,
                    )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.set_title(f"{op}: × vs upstream eager (higher is faster)", fontsize=10, loc="left")
        ax.set_xticks(range(len(glist)))
        ax.set_xticklabels([g.split(" | ", 1)[-1].replace(" | ", "\n") for g, _ in glist], fontsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "json",
        type=Path,
        nargs="?",
        default=HERE / "out" / "run.json",
        help="pytest-benchmark JSON (default: bench/out/run.json, what `pytest bench` writes)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-png", action="store_true", help="write only report.md")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    groups = group_entries(data)
    if not groups:
        print(f"{args.json}: no benchmarks in this file (was it run with --benchmark-disable?)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / "report.md"
    md.write_text(render_markdown(data, groups) + "\n")
    print(f"wrote {md} ({len(groups)} groups)")
    if not args.no_png and render_png(groups, args.out / "report.png"):
        print(f"wrote {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
