"""Helpers for tests and benchmarks (ours and yours): random masks."""

from __future__ import annotations

import torch


def random_mask(
    n: int,
    dtype: torch.dtype = torch.bool,
    density: float = 0.5,
    *,
    device: torch.device | str = "cpu",
    soft: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A mask of ``n`` rows, each live with probability ``density``, of ``dtype``. With ``soft`` (a
    floating ``dtype``) live rows get a random scale in [0.5, 1.5) instead of 1."""
    live = torch.rand(n, generator=generator) < density
    if soft and dtype.is_floating_point:
        return torch.where(live, torch.rand(n, generator=generator) + 0.5, 0).to(device=device, dtype=dtype)
    return live.to(device=device, dtype=dtype)
