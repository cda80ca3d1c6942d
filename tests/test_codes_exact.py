"""Counts from bfloat16 products of 0/1 matrices are exact past bfloat16's integers."""

from __future__ import annotations

import torch

from circuitscan.codes.exact import count_gram, count_matmul


def test_count_matmul_is_exact_where_one_bfloat16_product_is_not():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(7, 1000, generator=g) < 0.9).float()
    b = (torch.rand(1000, 5, generator=g) < 0.8).float()
    want = a.double() @ b.double()
    assert float(want.max()) > 600  # far past 256, where bfloat16 has gaps of 2 and more
    got = count_matmul(a, b)
    assert got.dtype == torch.float32 and torch.equal(got.double(), want)
    naive = (a.bfloat16() @ b.bfloat16()).double()
    assert not torch.equal(naive, want)  # what the blocks are for


def test_count_gram_is_exact():
    g = torch.Generator().manual_seed(1)
    eq = (torch.rand(3, 777, 6, generator=g) < 0.7).float()
    want = torch.bmm(eq.double().transpose(1, 2), eq.double())
    assert torch.equal(count_gram(eq).double(), want)
