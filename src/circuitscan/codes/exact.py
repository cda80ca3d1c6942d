"""Exact counts from 0/1 matrix products in bfloat16.

A product of 0/1 matrices counts co-occurrences. In bfloat16 it is several times faster
than in float32 on CPUs with bf16 units (AVX512-BF16, AMX), and still exact: every
product is 0 or 1, so every partial sum is an integer no larger than the contracted
length, and every integer up to 256 is a bfloat16 (whether the kernel accumulates in
float32 or in bfloat16). So the contracted dimension goes in blocks of at most 256 and
the blocks' counts are added in float32 (exact up to 2^24).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

BLOCK = 256  # the largest count a bfloat16 holds exactly


def count_matmul(a: Float[Tensor, "m k"], b: Float[Tensor, "k p"]) -> Float[Tensor, "m p"]:
    """``a @ b`` for 0/1 matrices, exactly, in float32 (the inputs may be any dtype)."""
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    out = torch.zeros(a.shape[0], b.shape[1])
    for lo in range(0, a.shape[1], BLOCK):
        out += (a[:, lo : lo + BLOCK] @ b[lo : lo + BLOCK]).float()
    return out


def count_gram(eq: Float[Tensor, "b k h"]) -> Float[Tensor, "b h h"]:
    """``eq^T eq`` per batch for a 0/1 (or boolean) ``eq``, exactly, in float32."""
    out = torch.zeros(eq.shape[0], eq.shape[2], eq.shape[2])
    for lo in range(0, eq.shape[1], BLOCK):
        part = eq[:, lo : lo + BLOCK].to(torch.bfloat16)
        out += torch.bmm(part.transpose(1, 2), part).float()
    return out
