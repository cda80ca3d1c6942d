"""Codes -> scores: node counts by hand, the vectorised U against the obvious definition."""

from __future__ import annotations

import pytest
import torch

from circuitscan.codes import (
    cooccurrence_unique,
    cooccurrence_unique_reference,
    discretise,
    edge_scores,
    node_scores,
    softmax_scores,
    unique_positive_codes,
)
from circuitscan.codes.edge import top_pairs
from circuitscan.errors import CircuitscanError
from circuitscan.sae import SparseAutoencoder
from circuitscan.types import Codes, HeadLayout


def _codes(rows, labels, layout, n_codes=10):
    return Codes(torch.tensor(rows), torch.tensor(labels), layout, n_codes)


def test_unique_positive_codes_by_hand():
    layout = HeadLayout(1, 3)
    # head 0: pos {1, 2}, neg {1}      -> 1 unique
    # head 1: pos {5},    neg {5}      -> 0
    # head 2: pos {3, 4}, neg {7, 8}   -> 2
    c = _codes([[1, 5, 3], [2, 5, 4], [1, 5, 7], [1, 5, 8]], [True, True, False, False], layout)
    assert unique_positive_codes(c).tolist() == [1.0, 0.0, 2.0]
    # normalised by all codes seen: 1/2, 0/1, 2/4
    assert unique_positive_codes(c, normalise=True).tolist() == [0.5, 0.0, 0.5]
    # counting only some examples: drop the second positive
    mask = torch.tensor([True, False, True, True])
    assert unique_positive_codes(c, mask=mask).tolist() == [0.0, 0.0, 1.0]


def test_counting_needs_both_classes():
    c = _codes([[1], [2]], [True, True], HeadLayout(1, 1))
    with pytest.raises(CircuitscanError, match="0 negative"):
        unique_positive_codes(c)


def test_softmax_global_and_per_layer():
    u = torch.tensor([0.0, 1.0, 2.0, 3.0])
    g = softmax_scores(u, 2, "global")
    assert torch.isclose(g.sum(), torch.tensor(1.0, dtype=g.dtype))
    per = softmax_scores(u, 2, "layer")
    assert torch.allclose(per.reshape(2, 2).sum(1), torch.ones(2, dtype=per.dtype))
    assert torch.equal(torch.argsort(g), torch.argsort(u))  # monotone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_U_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    layout = HeadLayout(3, 4)
    n = 30
    codes = torch.randint(0, 4, (n, layout.n_total), generator=g)
    labels = torch.rand(n, generator=g) < 0.5
    c = Codes(codes, labels, layout, 4)
    fast = cooccurrence_unique(c, chunk=7)  # a chunk that does not divide n
    slow = cooccurrence_unique_reference(c)
    assert torch.equal(fast, slow)
    mask = torch.rand(n, generator=g) < 0.7
    assert torch.equal(cooccurrence_unique(c, mask=mask), cooccurrence_unique_reference(c, mask=mask))
    # the diagonal is the node-level count
    assert torch.equal(torch.diagonal(fast), unique_positive_codes(c))


def test_top_pairs_ignores_zero_pairs_and_keeps_ties():
    U = torch.tensor([[0, 3, 1, 0], [3, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float)
    # unordered pairs: (0,1)=3 (0,2)=1 (0,3)=0 (1,2)=1 (1,3)=0 (2,3)=0; k=2 -> 3 and the tied 1s
    pairs = top_pairs(U, 2).tolist()
    assert pairs == [[0, 1], [0, 2], [1, 2]]
    assert top_pairs(U, 1).tolist() == [[0, 1]]
    # default k = half of 6 pairs = 3; zero pairs never enter
    assert all(U[a, b] > 0 for a, b in top_pairs(U, None).tolist())


def test_edge_scores_count_pair_membership():
    layout = HeadLayout(1, 3)
    # heads 0 and 1 each show the same codes on both classes (no node-level signal), but
    # the combinations (1,6) and (2,5) occur only on positives
    rows = [[1, 5, 1], [1, 6, 1], [2, 5, 1], [1, 5, 1], [2, 6, 1]]
    c = _codes(rows, [True, True, True, False, False], layout)
    assert unique_positive_codes(c).tolist() == [0.0, 0.0, 0.0]
    u, U, pairs = edge_scores(c, k=1)
    assert U[0, 1] == 2 and U[0, 2] == 0 and U[1, 2] == 0
    assert pairs.tolist() == [[0, 1]]
    assert u.tolist() == [1.0, 1.0, 0.0]


def test_silent_rows_get_their_own_code():
    sae = SparseAutoencoder(2, 3)
    with torch.no_grad():
        sae.W_E.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_E.fill_(0.0)
    x = torch.tensor([[[2.0, 0.0], [-1.0, -1.0]], [[0.0, 3.0], [-2.0, -1.0]]])  # [2 examples, 2 heads, 2]
    labels = torch.tensor([True, False])
    c = discretise(sae, x, labels, HeadLayout(1, 2))
    assert c.codes.tolist() == [[0, 3], [1, 3]] and c.n_codes == 4
    c0 = discretise(sae, x, labels, HeadLayout(1, 2), silent="zero")
    assert c0.codes.tolist() == [[0, 0], [1, 0]] and c0.n_codes == 3


def test_discretise_gives_the_same_codes_whatever_the_block():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 40)
    with torch.no_grad():
        sae.W_E.copy_(torch.randn(16, 40))
        sae.b_E.fill_(-12.0)  # some rows silent
    x = torch.randn(37, 5, 16)
    labels = torch.arange(37) < 18
    whole = discretise(sae, x, labels, HeadLayout(1, 5), chunk=37).codes
    assert len(torch.unique(whole)) > 5 and bool((whole == 40).any())  # codes vary, some rows silent
    for chunk in (None, 1, 4, 36):
        assert torch.equal(discretise(sae, x, labels, HeadLayout(1, 5), chunk=chunk).codes, whole)


def test_node_scores_returns_raw_and_softmax():
    layout = HeadLayout(1, 2)
    c = _codes([[1, 1], [2, 1], [1, 1], [1, 1]], [True, True, False, False], layout)
    u, s = node_scores(c)
    assert u.tolist() == [1.0, 0.0]
    assert s[0] > s[1]


def _factored(n=41, heads=6, d_head=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, heads, d_head, generator=g)
    w_o = torch.randn(heads, d_head, d, generator=g)
    return z, w_o, torch.einsum("nhe,hed->nhd", z, w_o)


@pytest.mark.parametrize("silent", ["own-code", "zero"])
def test_discretise_folded_into_w_o_gives_the_codes_of_x(silent):
    z, w_o, x = _factored()
    sae = SparseAutoencoder(16, 30)
    with torch.no_grad():
        sae.W_E.copy_(torch.randn(16, 30, generator=torch.Generator().manual_seed(1)))
        sae.b.copy_(torch.randn(16, generator=torch.Generator().manual_seed(2)))
        sae.b_E.fill_(-6.0)  # some rows silent
    labels = torch.arange(41) < 20
    direct = discretise(sae, x, labels, HeadLayout(2, 3), silent=silent).codes
    folded = discretise(sae, x, labels, HeadLayout(2, 3), silent=silent, z=z, w_o=w_o).codes
    assert len(torch.unique(direct)) > 6
    if silent == "own-code":
        assert bool((direct == 30).any())
    assert torch.equal(folded, direct)
    # virtual heads (slots x heads, column slot * H + h) map back to head v % H
    folded2 = discretise(sae, x.repeat(1, 2, 1), labels, HeadLayout(2, 3), silent=silent,
                         z=z.repeat(1, 2, 1), w_o=w_o).codes
    assert torch.equal(folded2, direct.repeat(1, 2))


def test_discretise_refuses_factors_that_do_not_match_x():
    z, w_o, x = _factored()
    sae = SparseAutoencoder(16, 30)
    with pytest.raises(CircuitscanError, match="do not factor"):
        discretise(sae, x, torch.arange(41) < 20, HeadLayout(2, 3), z=z[:, :, :3], w_o=w_o)


def _sae_for(d, features=30, seed=1):
    sae = SparseAutoencoder(d, features)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_E.copy_(torch.randn(d, features, generator=g))
        sae.b.copy_(torch.randn(d, generator=g))
        sae.b_E.fill_(-4.0)
    return sae


def test_paired_feature_change_is_its_definition_on_both_paths():
    from circuitscan.codes.discretise import discretise_with_change

    z, w_o, x = _factored(n=40)
    sae = _sae_for(16)
    labels = torch.arange(40) < 20
    keep = torch.ones(40, dtype=torch.bool)
    keep[[3, 25, 30]] = False  # pairs 3, 5 and 10 lose a member
    f = sae.encode(x)
    pk = keep[:20] & keep[20:]
    absolute = (f[:20][pk] - f[20:][pk]).abs().sum(-1).mean(0)
    want = absolute / f[keep].abs().sum(-1).mean(0)
    for kw in ({}, {"z": z, "w_o": w_o}):
        for chunk in (None, 3):
            codes, change = discretise_with_change(sae, x, labels, HeadLayout(2, 3), keep=keep, chunk=chunk, **kw)
            assert torch.allclose(change, want, rtol=1e-5), (kw.keys(), chunk)
            assert torch.equal(codes.codes, discretise(sae, x, labels, HeadLayout(2, 3)).codes)
            _, change = discretise_with_change(sae, x, labels, HeadLayout(2, 3), keep=keep, chunk=chunk,
                                               change="absolute", **kw)
            assert torch.allclose(change, absolute, rtol=1e-5), (kw.keys(), chunk)
    assert discretise_with_change(sae, x, labels, HeadLayout(2, 3))[1] is None
    with pytest.raises(CircuitscanError, match="positives then their paired negatives"):
        discretise_with_change(sae, x, labels.flip(0), HeadLayout(2, 3), keep=keep)
    with pytest.raises(CircuitscanError, match="change must be 'relative' or 'absolute', got 'raw'"):
        discretise_with_change(sae, x, labels, HeadLayout(2, 3), keep=keep, change="raw")


def test_absolute_change_ranks_the_head_that_moves_more_first():
    """Two heads whose features move by the same fraction of their size: relative units tie
    them, absolute units put the larger one first."""
    from circuitscan.codes.discretise import discretise_with_change

    sae = SparseAutoencoder(2, 2)
    with torch.no_grad():
        sae.W_E.copy_(torch.eye(2))
        sae.b_E.zero_()
        sae.b.zero_()
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # head 0 writes feature 0, head 1 feature 1
    pos = torch.stack([base * torch.tensor([[1.0], [10.0]])] * 4)  # head 1 ten times larger
    neg = pos * 0.5  # the corruption halves both
    x, labels = torch.cat([pos, neg]), torch.arange(8) < 4
    keep = torch.ones(8, dtype=torch.bool)
    rel = discretise_with_change(sae, x, labels, HeadLayout(1, 2), keep=keep)[1]
    ab = discretise_with_change(sae, x, labels, HeadLayout(1, 2), keep=keep, change="absolute")[1]
    assert torch.allclose(rel, torch.full((2,), 0.5 / 0.75))  # |1 - 0.5| over the mean of 1 and 0.5
    assert torch.allclose(ab, torch.tensor([0.5, 5.0]))
