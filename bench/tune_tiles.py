"""Measure the kernels' tile choices on the GPU: for each case, time the tile that
``launch._gpu_tiles`` picks against a small sweep of other power-of-two tiles and warp counts, and
print a markdown table (device time, GB/s, % of copy bandwidth, the chosen tile marked). Every
tile's output is first checked exactly against the torch path.

    python bench/tune_tiles.py [--out DIR] [--budget-s 120]     # GPU
    python bench/tune_tiles.py --smoke                          # CPU: interpreter, tiny shapes

Cases: the bench suite's shapes (row-mask on weights, bias add on module outputs, contiguous and
channels_last). ``--budget-s`` stops the sweep when the time is spent (GPU sessions are short):
the cases finished so far are printed. ``--smoke`` only checks that the script and every tile it
tries are correct (Triton interpreter on the CPU; times mean nothing there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:  # must be set before triton (and the package) are imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from structprune_triton import launch, torch_path  # noqa: E402
from structprune_triton.layout import dense_3d  # noqa: E402


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
        return [TileCase("row_mask", (12, 40), fp32), TileCase("bias_add", (2, 6, 5, 7), fp32, True),
                TileCase("bias_add", (3, 70), fp32)]
    return [
        TileCase("row_mask", (16384, 4096), bf16), TileCase("row_mask", (1024, 1024, 3, 3), fp32),
        TileCase("bias_add", (8192, 4096), bf16), TileCase("bias_add", (64, 256, 56, 56), bf16),
        TileCase("bias_add", (64, 256, 56, 56), bf16, True), TileCase("bias_add", (64, 128, 28, 28), bf16),
        TileCase("row_mask", (4096, 4096), fp32), TileCase("row_mask", (256, 128, 3, 3), fp32),
    ]


def candidates(R: int, B: int, smoke: bool) -> list[tuple[int, int, int]]:
    """``(rows, width, warps)`` tiles to try for ``R`` rows of ``B`` contiguous elements (as
    ``launch._tiles`` takes them): the policy's tile first, then that tile with other warp counts,
    other tile sizes of the same width, and other widths at 4096 elements."""
    block_r, block_b, warps = launch._gpu_tiles(R, B)
    out = [(block_r, block_b, warps)]

    def add(tile: int, width: int, w: int) -> None:
        width = max(1, min(width, tile))
        cand = (min(tile // width, launch._pow2(R)), width, w)
        if cand not in out:
            out.append(cand)

    if smoke:
        add(8, 4, 1)
        add(64, 8, 1)
        return out
    tile = block_r * block_b
    for w in (1, 2, 4, 8):
        add(tile, block_b, w)
    for t in (1024, 2048, 8192, 16384):
        add(t, block_b, max(1, min(8, t // 1024)))
    widest = min(launch._pow2(B), 4096)
    for width in (widest, block_b * 2, block_b // 2, block_b // 4, 1):
        if 1 <= width <= widest:
            add(4096, width, 4)
    return out


def inputs(case: TileCase, device: str):
    torch.manual_seed(0)
    x = torch.randn(case.shape, device=device, dtype=case.dtype)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    if case.op == "row_mask":
        mask = torch.rand(case.shape[0], device=device) < 0.5
        return x, mask, None, 0
    dim = 1
    bias = torch.randn(case.shape[dim], device=device, dtype=case.dtype)
    mask = torch.rand(case.shape[dim], device=device) < 0.5
    return x, mask, bias, dim


def run_one(case: TileCase, x, mask, bias, dim, dst):
    if case.op == "row_mask":
        return launch.row_mask(x, mask)
    return launch.bias_add(x, bias, mask, dim, True, dst=dst)


def reference(case: TileCase, x, mask, bias, dim):
    if case.op == "row_mask":
        return torch_path.row_mask(x, mask)
    return torch_path.bias_add_into(x, bias, mask, dim, True, torch.empty_like(x))


def time_ms(fn, smoke: bool) -> float:
    if smoke:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")


def copy_gbps(device: str, smoke: bool) -> float | None:
    if smoke:
        return None
    n = 512 << 20
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return 2 * n / (time_ms(lambda: dst.copy_(src), smoke) * 1e-3) / 1e9


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
    copy = copy_gbps(device, args.smoke)
    lines = [f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (interpreter)'} · "
             f"torch {torch.__version__} · copy bandwidth {copy:.0f} GB/s" if copy else "device: cpu (interpreter)",
             "", "| case | tile rows x width | warps | time | GB/s | % copy | |", "|---|---|---|---|---|---|---|"]
    chosen_tiles = launch._tiles
    failures = 0
    try:
        for case in cases(args.smoke):
            if time.monotonic() - start > args.budget_s:
                lines.append(f"| (budget of {args.budget_s:.0f} s spent: later cases not run) | | | | | | |")
                break
            x, mask, bias, dim = inputs(case, device)
            A, R, B = dense_3d(x, dim)
            # the tile's (rows, contiguous width): as launch._geometry lays them out
            tile_rows, tile_width = (A, R) if B == 1 and A > 1 else (R, B)
            expected = reference(case, x, mask, bias, dim)
            dst = torch.empty_like(x)
            live = int(mask.sum()) if case.op == "row_mask" else R
            moved = (x.numel() * live // R + x.numel()) * x.element_size()
            results = []
            for i, (block_r, block_b, warps) in enumerate(candidates(tile_rows, tile_width, args.smoke)):
                launch._tiles = lambda *_a, t=(block_r, block_b, warps): t  # noqa: E731
                out = run_one(case, x, mask, bias, dim, dst)
                if not torch.equal(out, expected):
                    failures += 1
                    lines.append(f"| {case.name} | {block_r}x{block_b} | {warps} | WRONG OUTPUT | | | |")
                    continue
                ms = time_ms(lambda: run_one(case, x, mask, bias, dim, dst), args.smoke)
                results.append((ms, block_r, block_b, warps, i == 0))
            best = min(r[0] for r in results) if results else None
            shown = sorted(results)[:6]
            shown += [r for r in results if r[4] and r not in shown]
            for ms, block_r, block_b, warps, is_chosen in shown:
                gbps = moved / (ms * 1e-3) / 1e9
                tag = ("**policy**" if is_chosen else "") + (" best" if ms == best else "")
                pct = f"{100 * gbps / copy:.0f}%" if copy else ""
                lines.append(f"| {case.name} (A={A}, R={R}, B={B}) | {block_r}x{block_b} | {warps} | {ms * 1e3:.1f} us | "
                             f"{gbps:.0f} | {pct} | {tag.strip()} |")
    finally:
        launch._tiles = chosen_tiles
    lines.append(f"\n{time.monotonic() - start:.0f} s; {failures} wrong outputs")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tiles.md").write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
