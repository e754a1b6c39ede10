"""Counter-based random numbers: draws that depend only on (seed, key), so every rank draws the same number
for the same global key whatever the split among ranks, and a resumed run draws what the uninterrupted one
would have (splitmix64 applied twice to the counter; Box-Muller for normals)."""

from __future__ import annotations

import math

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping arithmetic; logical shifts emulated with masks)."""

    def shr(v: torch.Tensor, n: int) -> torch.Tensor:
        return (v >> n) & ((1 << (64 - n)) - 1)

    x = (x ^ shr(x, 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    x = (x ^ shr(x, 27)) * -7723592293110705685  # 0x94D049BB133111EB as int64
    return x ^ shr(x, 31)


def hashed_bits(keys: torch.Tensor, seed: int) -> torch.Tensor:
    """64 random bits per key, int64 [len(keys)], that depend only on (seed, key)."""
    return _mix64(_mix64(keys.to(torch.int64) * _GOLDEN + seed) + _GOLDEN)


def hashed_uniform(keys: torch.Tensor, seed: int, dims: int) -> torch.Tensor:
    """Uniform samples in (0, 1), float64 [len(keys), dims], that depend only on (seed, key)."""
    counter = keys.to(torch.int64)[:, None] * dims + torch.arange(dims, device=keys.device)
    bits = hashed_bits(counter, seed)
    return ((bits >> 11) & ((1 << 53) - 1)).double().add_(0.5).mul_(2.0**-53)


def hashed_normal(keys: torch.Tensor, seed: int, dims: int) -> torch.Tensor:
    """Standard normal samples, float64 [len(keys), dims], that depend only on (seed, key)."""
    pairs = (dims + 1) // 2
    u = hashed_uniform(keys, seed, 2 * pairs)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2.0 * math.pi * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :dims]
