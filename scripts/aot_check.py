"""Ahead-of-time check of the GPU code, without a GPU: compile every launch of a table of realistic
shapes for sm_80, sm_90 and sm_100 and fail if the compiled code breaks a rule (see ``RULES``).

Each launch is planned by the package's own launch planning on meta tensors (so tile, grid, warps and
constexprs are exactly those a CUDA device gets), specialised as the JIT does and compiled by Triton's
NVIDIA backend (``scripts/aot_inspect.py``). Prints one row per launch for sm_90: what the code moves
per thread and what it costs in registers and barriers, the DRAM bytes it must move and the floor that
sets at the H200's measured copy rate. Compiled facts and floors, not measurements.

    python3 scripts/aot_check.py                 # the whole table, all targets (CI)
    python3 scripts/aot_check.py --only 1024x1000 --targets 90
    python3 scripts/aot_check.py --markdown      # the compact sm_90 table of BENCHMARKS.md
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before Triton or the kernels are imported: compile, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the JIT's default; silences triton 3.9's warning
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402

import aot_inspect  # noqa: E402
import aot_launches  # noqa: E402

TARGETS = (80, 90, 100)
H200_SMS = 132
COPY_GBPS = 4247.0  # H200 device-to-device copy, bytes read + written (one H200, torch 2.11.0+cu130, triton 3.6.0)
RULES = {
    "compiles": "compiles for sm_80, sm_90 and sm_100",
    "skips": "row-mask launches: every data load predicated on the mask (masked rows unread)",
    "16B": "one dtype, rows of 8k elements: data loads and stores 16 bytes per thread",
    "regs": "rows of 8k elements (any dtype mix): at most 64 registers",
    "spills": "rows of 8k elements (any dtype mix): no spills",
    "smem": "rows of 8k elements (any dtype mix): no barrier (layout conversion through shared memory)",
    "vec": "one dtype, rows of 8k elements: per-row vectors re-read by programs <= 25% of DRAM bytes",
}


def occupancy(regs: int, warps: int, shared: int) -> int:
    """Resident programs per SM on sm_90 (65536 registers in units of 256 per warp, 64 warps, 32
    blocks, 228 KiB shared memory)."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = 65536 // (per_warp * warps)
    by_smem = (228 * 1024) // shared if shared else 32
    return max(1, min(32, 64 // warps, by_regs, by_smem))


def evaluate(launch: aot_launches.Planned, facts: dict) -> list[str]:
    """Names of the rules ``launch`` breaks, given its compiled facts per target (None: did not compile)."""
    broken = [] if all(f is not None for f in facts.values()) else ["compiles"]
    for f in facts.values():
        if f is None:
            continue
        data = [a for a in f.accesses if a.tensor in launch.data]
        if launch.case.op != "hook" and not all("mask_ptr" in a.guarded_by for a in data if not a.store):
            broken.append("skips")
        if not launch.aligned:
            continue
        if launch.uniform and (not data or any(a.bytes != 16 for a in data)):
            broken.append("16B")
        if f.regs > 64:
            broken.append("regs")
        if f.spill_bytes:
            broken.append("spills")
        if f.barriers:
            broken.append("smem")
    if launch.uniform and launch.vector_bytes > 0.25 * launch.dram_bytes:
        broken.append("vec")
    return sorted(set(broken), key=list(RULES).index)


def widths(f, tensors, store: bool) -> str:
    found = sorted({a.bytes for a in f.accesses if a.tensor in tensors and a.store == store})
    return "/".join(map(str, found)) or "-"


def row(launch, facts: dict, broken: list[str]) -> list[str]:
    f = facts.get(90)
    grid = launch.grid
    if f is None:
        return [
            launch.case.label(),
            launch.tile,
            "",
            str(grid),
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "FAIL " + ",".join(broken),
        ]
    waves = grid / (H200_SMS * occupancy(f.regs, launch.warps, f.shared))
    data_loads = [a for a in f.accesses if a.tensor in launch.data and not a.store]
    pred = "-" if launch.case.op == "hook" else ("yes" if all("mask_ptr" in a.guarded_by for a in data_loads) else "NO")
    return [
        launch.case.label(),
        launch.tile,
        str(launch.warps),
        str(grid),
        f"{waves:.1f}",
        widths(f, launch.data, False),
        widths(f, launch.data, True),
        pred,
        str(f.regs),
        str(f.spill_bytes),
        str(f.barriers),
        f"{launch.dram_bytes / 1e6:.1f}",
        f"{launch.dram_bytes / COPY_GBPS / 1e3:.1f}",
        f"{100 * launch.vector_bytes / launch.dram_bytes:.0f}",
        ("FAIL " + ",".join(broken))
        if broken
        else ("ok" if launch.uniform else "ok (mixed dtypes)" if launch.aligned else "ok (odd rows or fp64)"),
    ]


HEADER = [
    "launch",
    "tile",
    "warps",
    "grid",
    "waves",
    "ld B",
    "st B",
    "skips",
    "regs",
    "spill",
    "bar",
    "MB",
    "floor us",
    "vec %",
    "rules",
]


def print_table(rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(x) for x in col) for col in zip(HEADER, *rows, strict=True)]
    for r in [HEADER, *rows]:
        print("  ".join(x.ljust(n) for x, n in zip(r, w, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="comma-separated sm numbers")
    p.add_argument("--only", default="", help="launches whose label contains this text")
    p.add_argument("--jobs", type=int, default=2, help="compiler processes")
    p.add_argument("--markdown", action="store_true", help="compact sm_90 table for BENCHMARKS.md")
    a = p.parse_args(argv)
    start = time.perf_counter()
    targets = [int(t) for t in a.targets.split(",")]
    launches = [lc for lc in aot_launches.plan_all(compact=a.markdown) if a.only in lc.case.label()]
    if not launches:
        print(f"no launch matches {a.only!r}")
        return 2
    specs = {
        (i, arch): aot_inspect.specialize(lc.kernel, lc.args, lc.kwargs, arch)
        for i, lc in enumerate(launches)
        for arch in targets
    }
    distinct = sorted(set(specs.values()), key=repr)
    compiled: dict = {}
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, a.jobs), mp_context=ctx) as pool:
        futures = {pool.submit(aot_inspect.compile_spec, s): s for s in distinct}
        for fut in concurrent.futures.as_completed(futures):
            try:
                compiled[futures[fut]] = fut.result()
            except Exception as e:  # a compile error is a rule failure, reported per launch
                compiled[futures[fut]] = None
                print(f"compile error {futures[fut].name} sm_{futures[fut].arch}: {type(e).__name__}: {e}")
    rows, failures = [], 0
    for i, lc in enumerate(launches):
        facts = {arch: compiled[specs[i, arch]] for arch in targets}
        broken = evaluate(lc, facts)
        failures += bool(broken)
        rows.append(row(lc, facts, broken))
    print_table(rows, a.markdown)
    if not a.markdown:
        for arch in targets:
            got = [compiled[specs[i, arch]] for i, lc in enumerate(launches) if lc.aligned]
            got = [f for f in got if f is not None]
            if got:
                print(
                    f"sm_{arch}, rows of 8k elements: at most {max(f.regs for f in got)} registers, "
                    f"{max(f.barriers for f in got)} barriers, {max(f.spill_bytes for f in got)} spilled bytes."
                )
        print(
            f"\n{len(launches)} launches, {len(distinct)} distinct specializations for "
            f"sm_{', sm_'.join(map(str, targets))}; "
            f"{failures} launches break a rule; {time.perf_counter() - start:.0f} s."
        )
        print(
            "Columns (sm_90): ld/st B = bytes per thread per data load/store instruction; skips = data loads "
            "predicated on the mask; bar = bar.sync; MB = DRAM bytes at mask density 0.5; floor = MB / "
            f"{COPY_GBPS:.0f} GB/s (H200 copy); vec % = per-row vector bytes loaded by all programs / MB; "
            f"waves at {H200_SMS} SMs."
        )
        for name, text in RULES.items():
            print(f"  rule {name}: {text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
