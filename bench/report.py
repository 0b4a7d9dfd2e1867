#!/usr/bin/env python3
"""Turn a ``pytest bench --benchmark-json RUN.json`` run into ``DIR/report.md`` (a markdown table per
benchmark group) and ``DIR/report.png`` (speed-ups; skipped with a message without matplotlib).

    python bench/report.py RUN.json --out DIR

Needs only the standard library (and matplotlib for the PNG): it runs anywhere the JSON is.

The time of an entry is ``extra_info['time_s']`` when the bench recorded it: on CUDA the median
device time from ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call); on CPU the
median wall time per call. Entries without it (other suites) use pytest-benchmark's median.
Speed-up "vs X" is X's time divided by this entry's time: above 1 means faster than X.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

IMPL_ORDER = ["upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "copy"]
OP_ORDER = ["fss_fwd", "fss_fwdbwd", "bias_hook", "linear_fwd", "linear_fwdbwd", "conv2d_fwd", "conv2d_fwdbwd"]
BASE_EAGER, BASE_COMPILED = "upstream-eager", "upstream-compiled"
# issue 5: the eager CPU torch path may be at most this much slower than upstream eager
SLOWDOWN_LIMIT = 1.10


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_num(x, digits: int = 3, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}g}{suffix}"


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}x"


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|")


class Entry:
    """One benchmark of the JSON, with what the report needs."""

    def __init__(self, bench: dict) -> None:
        self.raw = bench
        self.group = bench.get("group") or bench.get("name", "?")
        self.extra = bench.get("extra_info") or {}
        self.stats = bench.get("stats") or {}
        params = bench.get("params") or {}
        self.impl = self.extra.get("impl") or params.get("impl") or bench.get("name", "?")
        self.op = self.extra.get("op") or self.group.split(" | ")[0]
        t = self.extra.get("time_s")
        self.time = float(t) if t is not None else self.stats.get("median")
        self.wall_sync = self.extra.get("table_median_s", self.stats.get("median"))
        self.table_min = self.stats.get("min")
        self.wall_nosync = self.extra.get("wall_us_nosync")
        self.gbps = self.extra.get("gbps")
        self.pct_copy = self.extra.get("pct_copy")
        self.tflops = self.extra.get("tflops")
        self.interleaved = self.extra.get("vs_upstream_eager_interleaved")

    def notes(self) -> str:
        parts = []
        if self.extra.get("ours_path"):
            parts.append(f"path={self.extra['ours_path']}")
        if self.extra.get("graphs") is not None:
            parts.append(f"graphs={self.extra['graphs']}")
        if self.extra.get("graph_breaks"):
            parts.append(f"breaks={self.extra['graph_breaks']}")
        if self.interleaved is not None:
            parts.append(f"interleaved vs upstream eager {self.interleaved:.3g}x")
        if self.extra.get("bytes") is not None:
            parts.append(f"{self.extra['bytes'] / 1e6:.3g} MB")
        return ", ".join(parts)


def load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def group_entries(data: dict) -> "OrderedDict[str, list[Entry]]":
    entries = [Entry(b) for b in data.get("benchmarks", [])]

    def op_rank(e: Entry) -> int:
        return OP_ORDER.index(e.op) if e.op in OP_ORDER else len(OP_ORDER)

    groups: OrderedDict[str, list[Entry]] = OrderedDict()
    order = {}
    for i, e in enumerate(entries):
        order.setdefault(e.group, (op_rank(e), i))
        groups.setdefault(e.group, []).append(e)
    sorted_groups = OrderedDict()
    for g in sorted(groups, key=lambda g: order[g]):
        sorted_groups[g] = sorted(groups[g], key=lambda e: (IMPL_ORDER.index(e.impl) if e.impl in IMPL_ORDER
                                                            else len(IMPL_ORDER), e.impl))
    return sorted_groups


def machine_summary(data: dict) -> dict:
    mi = data.get("machine_info") or {}
    sb = mi.get("structprune_bench") or {}
    first = next((b.get("extra_info") or {} for b in data.get("benchmarks", [])), {})
    return {
        "device": sb.get("device") or first.get("device") or mi.get("cpu", {}).get("brand_raw") or mi.get("node"),
        "torch": sb.get("torch") or first.get("torch"),
        "triton": sb.get("triton") or first.get("triton"),
        "cuda": sb.get("cuda"),
        "python": mi.get("python_version"),
        "copy_gbps": sb.get("copy_gbps") or first.get("copy_gbps"),
        "compile_backend": sb.get("compile_backend"),
        "quick": sb.get("quick"),
        "time_source": first.get("time_source") or "pytest-benchmark median",
        "datetime": data.get("datetime"),
        "commit": (data.get("commit_info") or {}).get("id"),
    }


def speedup(base: Entry | None, e: Entry | None) -> float | None:
    if base is None or e is None or not base.time or not e.time:
        return None
    return base.time / e.time


def render_markdown(data: dict, groups: "OrderedDict[str, list[Entry]]") -> str:
    m = machine_summary(data)
    lines = ["# structprune_triton benchmark report", ""]
    facts = [f"device: {m['device']}", f"torch {m['torch']}", f"triton {m['triton']}"]
    if m["cuda"]:
        facts.append(f"CUDA {m['cuda']}")
    if m["python"]:
        facts.append(f"Python {m['python']}")
    if m["compile_backend"]:
        facts.append(f"compile backend: {m['compile_backend']}")
    if m["copy_gbps"]:
        facts.append(f"copy bandwidth (same run): {m['copy_gbps']:.4g} GB/s")
    if m["quick"]:
        facts.append("quick mode")
    lines.append(" · ".join(facts))
    extra = [x for x in (m["datetime"] and f"run {m['datetime']}", m["commit"] and f"commit {m['commit'][:12]}") if x]
    if extra:
        lines += ["", " · ".join(extra)]
    lines += [
        "",
        f"**time** = {m['time_source']}. **× vs upstream eager / compiled** = that implementation's time "
        "divided by this one's (above 1: faster). **GB/s** = bytes this implementation must move "
        "(a dense op: every element read once and written once; the row-skipping Triton kernel reads only "
        "live rows) over time; **% copy** = that over the copy bandwidth measured in the same run (on CPU, "
        "small tensors sit in cache and can exceed 100%). **table median / min** = pytest-benchmark's "
        "statistics (CUDA: host wall time of one call + synchronize; CPU: the time above, whose min is "
        "the steadier figure on a busy machine); **no-sync wall** = per call in a loop of K calls with one synchronize "
        "(host launch cost; GPU, small tensors only).",
        "",
    ]

    # summary: one row per group
    interleaved = any(e.interleaved is not None for es in groups.values() for e in es)
    cols = ["group", "upstream eager", "ours eager", "ours vs upstream eager"]
    if interleaved:
        cols.append("same, interleaved")
    cols += ["upstream compiled", "ours compiled", "ours compiled vs upstream compiled"]
    lines += ["## Summary", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    slow = []
    for g, es in groups.items():
        by = {e.impl: e for e in es}
        ue, uc, oe, oc = (by.get(k) for k in ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled"))
        r_e, r_c = speedup(ue, oe), speedup(uc, oc)
        r_i = oe.interleaved if oe is not None else None
        judged = r_i if r_i is not None else r_e  # the interleaved ratio is the steadier one
        flag = ""
        if judged is not None and judged < 1 / SLOWDOWN_LIMIT:
            flag = " **(>10% slower)**"
            slow.append((g, judged))
        row = [cell(g), fmt_time(ue.time if ue else None), fmt_time(oe.time if oe else None),
               fmt_ratio(r_e) + ("" if r_i is not None else flag)]
        if interleaved:
            row.append(fmt_ratio(r_i) + (flag if r_i is not None else ""))
        row += [fmt_time(uc.time if uc else None), fmt_time(oc.time if oc else None), fmt_ratio(r_c)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if interleaved:
        lines.append("*interleaved*: ours eager and upstream eager timed in alternating blocks in the same test "
                     "(median over blocks of upstream time / ours); it is the figure judged against the 10% limit.")
        lines.append("")
    if slow:
        lines.append(f"{len(slow)} group(s) where ours eager is more than 10% slower than upstream eager: "
                     + "; ".join(f"{g} ({1 / r:.2f}x the time)" for g, r in slow) + ".")
    else:
        lines.append("Ours eager is within 10% of upstream eager (or faster) in every group.")
    lines.append("")

    for g, es in groups.items():
        by = {e.impl: e for e in es}
        ue, uc = by.get(BASE_EAGER), by.get(BASE_COMPILED)
        has_tflops = any(e.tflops for e in es)
        has_bw = any(e.gbps for e in es)
        cols = ["implementation", "time", "× vs upstream eager", "× vs upstream compiled"]
        if has_bw:
            cols += ["GB/s", "% copy"]
        if has_tflops:
            cols += ["TFLOP/s"]
        cols += ["table median", "table min", "no-sync wall", "notes"]
        lines += [f"## {g}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for e in es:
            row = [e.impl, fmt_time(e.time), fmt_ratio(speedup(ue, e)), fmt_ratio(speedup(uc, e))]
            if has_bw:
                row += [fmt_num(e.gbps, 4), fmt_num(e.pct_copy, 3, "%")]
            if has_tflops:
                row += [fmt_num(e.tflops, 3)]
            row += [fmt_time(e.wall_sync), fmt_time(e.table_min),
                    fmt_time(e.wall_nosync * 1e-6) if e.wall_nosync else "", e.notes()]
            lines.append("| " + " | ".join(cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def render_png(data: dict, groups: "OrderedDict[str, list[Entry]]", path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print(f"matplotlib is not installed: skipping {path}")
        return False

    # one panel per op; whole-layer ops (one group each) share a panel
    by_op: OrderedDict[str, list[tuple[str, list[Entry]]]] = OrderedDict()
    for g, es in groups.items():
        op = es[0].op
        by_op.setdefault(op if op in ("fss_fwd", "fss_fwdbwd", "bias_hook") else "layers", []).append((g, es))
    impls = [i for i in IMPL_ORDER if any(e.impl == i for es in groups.values() for e in es)]
    impls += sorted({e.impl for es in groups.values() for e in es} - set(impls))
    colors = {"upstream-eager": "#9e9e9e", "upstream-compiled": "#5c6bc0", "ours-eager": "#ef6c00",
              "ours-compiled": "#2e7d32", "copy": "#000000"}

    n = len(by_op)
    widest = max(len(v) for v in by_op.values()) if by_op else 1
    fig, axes = plt.subplots(n, 1, figsize=(min(28, max(9, 1.3 * widest + 3)), 3.6 * n + 0.8), squeeze=False)
    m = machine_summary(data)
    fig.suptitle(f"Speed-up vs upstream eager (higher is faster) — {m['device']}, torch {m['torch']}, "
                 f"triton {m['triton']}", fontsize=11)
    width = 0.8 / max(1, len(impls))
    for ax, (op, glist) in zip(axes[:, 0], by_op.items(), strict=True):
        labels, labelled, values = [], set(), [1.0]
        for gi, (g, es) in enumerate(glist):
            base = next((e for e in es if e.impl == BASE_EAGER), None)
            labels.append(g if op == "layers" or " | " not in g else g.split(" | ", 1)[1])
            for ii, impl in enumerate(impls):
                e = next((e for e in es if e.impl == impl), None)
                s = speedup(base, e) if e else None
                if s is None:
                    continue
                x = gi + (ii - (len(impls) - 1) / 2) * width
                # bars grow from 1 (upstream eager) up to faster, down to slower
                ax.bar(x, s - 1.0, width, bottom=1.0, color=colors.get(impl), label=None if impl in labelled else impl)
                labelled.add(impl)
                values.append(s)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.set_ylim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.3))
        ax.set_xlim(-0.6, len(glist) - 0.4)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_title(op, fontsize=10, loc="left")
        ax.set_ylabel("× vs upstream eager")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([lab.replace(" | ", "\n") for lab in labels], fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON (pytest bench --benchmark-json FILE)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (report.md, report.png)")
    ap.add_argument("--no-png", action="store_true", help="write only report.md")
    args = ap.parse_args(argv)

    data = load(args.json)
    groups = group_entries(data)
    if not groups:
        print(f"{args.json}: no benchmarks in this file (was it run with --benchmark-disable?)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / "report.md"
    md.write_text(render_markdown(data, groups) + "\n")
    print(f"wrote {md} ({len(groups)} groups)")
    if not args.no_png:
        png = args.out / "report.png"
        if render_png(data, groups, png):
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
