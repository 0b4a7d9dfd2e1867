"""Measure the kernels' tile choices on the GPU: for each case, time the tile the default settings
pick (``launch.gpu_tiles``) against the tiles other settings give (``gpu_tile``, ``gpu_max_warps``,
``gpu_min_block_b``), and print a markdown table (device time, GB/s, % of copy bandwidth, the chosen
tile marked). Every tile's output is first checked exactly against plain torch arithmetic.

    python bench/tune_tiles.py [--out DIR] [--budget-s 120]     # GPU
    python bench/tune_tiles.py --smoke                          # CPU: interpreter, tiny shapes

Cases: the bench suite's shapes (row-mask on weights, bias add on module outputs, contiguous and
channels_last). ``--budget-s`` stops the sweep when the time is spent (GPU sessions are short):
the cases finished so far are printed. ``--smoke`` only checks that the script and every tile it
tries are correct (Triton interpreter on the CPU, whose tile is ``interpreter_tile``; times mean
nothing there).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:  # must be set before triton (and the package) are imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import structprune_triton  # noqa: E402
from structprune_triton import Settings, run_info  # noqa: E402
from structprune_triton.launch import dense_3d  # noqa: E402
from structprune_triton.ops import bias_add, row_mask  # noqa: E402
from structprune_triton.testing import random_mask  # noqa: E402


@dataclass(frozen=True)
class TileCase:
    op: str  # "row_mask" | "bias_add"
    shape: tuple
    dtype: torch.dtype
    channels_last: bool = False

    @property
    def name(self) -> str:
        dims = "x".join(map(str, self.shape))
        dt = str(self.dtype).replace("torch.", "")
        return f"{self.op} {dims} {dt}" + (" channels_last" if self.channels_last else "")


def cases(smoke: bool) -> list[TileCase]:
    bf16, fp32 = torch.bfloat16, torch.float32
    if smoke:
        return [
            TileCase("row_mask", (12, 40), fp32),
            TileCase("bias_add", (2, 6, 5, 7), fp32, True),
            TileCase("bias_add", (3, 70), fp32),
        ]
    return [
        TileCase("row_mask", (16384, 4096), bf16),
        TileCase("row_mask", (1024, 1024, 3, 3), fp32),
        TileCase("bias_add", (8192, 4096), bf16),
        TileCase("bias_add", (64, 256, 56, 56), bf16),
        TileCase("bias_add", (64, 256, 56, 56), bf16, True),
        TileCase("bias_add", (64, 128, 28, 28), bf16),
        TileCase("row_mask", (4096, 4096), fp32),
        TileCase("row_mask", (256, 128, 3, 3), fp32),
    ]


def candidate_settings(smoke: bool) -> list[Settings]:
    """The default settings first (the policy), then variations of the tile settings."""
    base = structprune_triton.current_settings()
    if smoke:
        return [base, dataclasses.replace(base, interpreter_tile=8), dataclasses.replace(base, interpreter_tile=64)]
    out = [base]
    out += [dataclasses.replace(base, gpu_max_warps=w) for w in (1, 2, 8)]
    out += [
        dataclasses.replace(base, gpu_tile=t, gpu_max_warps=max(1, min(8, t // 1024)))
        for t in (1024, 2048, 8192, 16384)
    ]
    out += [dataclasses.replace(base, gpu_min_block_b=b) for b in (1, 8, 128, 512)]
    return out


def inputs(case: TileCase, device: str):
    torch.manual_seed(0)
    x = torch.randn(case.shape, device=device, dtype=case.dtype)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    dim = 0 if case.op == "row_mask" else 1
    bias = None if case.op == "row_mask" else torch.randn(case.shape[dim], device=device, dtype=case.dtype)
    return x, random_mask(case.shape[dim], density=0.5, device=device), bias, dim


def plan(case: TileCase, x, mask, bias, dim, dst, s: Settings):
    """The kernel launch the op would make under settings ``s``, writing into ``dst``."""
    if case.op == "row_mask":
        return row_mask.plan_launch(x, mask, dst, settings=s)
    return bias_add.plan_launch(x, bias, mask, dst, dim, True, settings=s)


def reference(case: TileCase, x, mask, bias, dim):
    shape = [1] * x.dim()
    shape[dim] = -1
    if case.op == "row_mask":
        return torch.where(mask.reshape(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x + torch.where(mask, bias, 0).reshape(shape)


def time_ms(fn, smoke: bool) -> float:
    if smoke:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="also write the table to OUT/tiles.md")
    ap.add_argument("--budget-s", type=float, default=120.0, help="stop starting new cases after this long")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: correctness only")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("tune_tiles: no CUDA GPU (use --smoke for a CPU correctness run)", file=sys.stderr)
        return 3
    device = "cpu" if args.smoke else "cuda"
    start = time.monotonic()
    copy = None if args.smoke else run_info.copy_bandwidth(device)
    lines = [f"- {key}: {value}" for key, value in run_info.describe(device)]
    lines += [f"- copy bandwidth: {copy:.0f} GB/s" if copy else "- times: meaningless (interpreter)", ""]
    lines += [
        "| case | tile rows x width | warps | time | GB/s | % copy | |",
        "|---|---|---|---|---|---|---|",
    ]
    failures = 0
    for case in cases(args.smoke):
        if time.monotonic() - start > args.budget_s:
            lines.append(f"| (budget of {args.budget_s:.0f} s spent: later cases not run) | | | | | | |")
            break
        x, mask, bias, dim = inputs(case, device)
        A, R, B = dense_3d(x, dim)
        expected = reference(case, x, mask, bias, dim)
        dst = torch.empty_like(x)
        live = int(mask.sum()) if case.op == "row_mask" else R
        moved = (x.numel() * live // R + x.numel()) * x.element_size()
        results, seen = [], set()
        for i, s in enumerate(candidate_settings(args.smoke)):
            launch = plan(case, x, mask, bias, dim, dst, s)
            tile = (launch.kwargs["BLOCK_R"], launch.kwargs["BLOCK_C"], launch.kwargs["num_warps"])
            if tile in seen:
                continue
            seen.add(tile)
            dst.fill_(float("nan"))
            launch.run()
            if not torch.equal(dst, expected):
                failures += 1
                lines.append(f"| {case.name} | {tile[0]}x{tile[1]} | {tile[2]} | WRONG OUTPUT | | | |")
                continue
            results.append((time_ms(launch.run, args.smoke), *tile, i == 0))
        best = min(r[0] for r in results) if results else None
        shown = sorted(results)[:6]
        shown += [r for r in results if r[4] and r not in shown]
        for ms, block_r, block_c, warps, is_chosen in shown:
            gbps = moved / (ms * 1e-3) / 1e9
            tag = ("**policy**" if is_chosen else "") + (" best" if ms == best else "")
            pct = f"{100 * gbps / copy:.0f}%" if copy else ""
            lines.append(
                f"| {case.name} (A={A}, R={R}, B={B}) | {block_r}x{block_c} | {warps} | {ms * 1e3:.1f} us | "
                f"{gbps:.0f} | {pct} | {tag.strip()} |"
            )
    lines.append(f"\n{time.monotonic() - start:.0f} s; {failures} wrong outputs")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tiles.md").write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
