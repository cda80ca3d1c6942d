"""Toy models and SAEs with known structure for the feature-circuit tests (helpers), and
checks that the toys are what the other tests assume."""

from __future__ import annotations

import torch

from circuitscan.features.saes import SublayerSAEs
from circuitscan.features.sites import parse_sites
from circuitscan.models.handle import ModelHandle
from circuitscan.sae.model import SparseAutoencoder
from circuitscan.types import HeadLayout

FOUR_SITES = "embed,attn.0,mlp.0,resid.0"


def _boot(cfg: dict):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(cfg)


def _handle(bridge, name: str, n_layers: int, n_heads: int) -> ModelHandle:
    bridge.eval()
    return ModelHandle(bridge=bridge, spec=name, family=name, layout=HeadLayout(n_layers, n_heads),
                       tokenizer=None, prepend_bos=False)


def known_paths_model(seed: int = 0):
    """One layer, no normalisation, ReLU MLP, uniform attention (W_Q = W_K = 0): every
    Jacobian between the four sublayers is known in closed form (see :func:`analytic`)."""
    d, dh, h, dm, vocab, n_ctx = 6, 3, 2, 10, 11, 8
    bridge = _boot(dict(n_layers=1, n_heads=h, d_model=d, d_head=dh, d_mlp=dm, d_vocab=vocab, n_ctx=n_ctx,
                        attn_only=False, normalization_type=None, act_fn="relu", seed=seed))
    g = torch.Generator().manual_seed(seed)
    p = dict(bridge.named_parameters())
    pre = "layers.0._original_component"
    w = {
        "E": torch.randn(vocab, d, generator=g),
        "P": torch.randn(n_ctx, d, generator=g) * 0.5,
        "W_V": torch.randn(h * dh, d, generator=g) * 0.6,
        "W_O": torch.randn(d, h * dh, generator=g) * 0.6,
        "W_in": torch.randn(dm, d, generator=g) * 0.7,
        "b_in": torch.randn(dm, generator=g) * 0.3,
        "W_out": torch.randn(d, dm, generator=g) * 0.5,
        "W_U": torch.randn(vocab, d, generator=g),
    }
    with torch.no_grad():
        for t in p.values():
            t.zero_()
        p["tok_embed._original_component.weight"].copy_(w["E"])
        p["pos._original_component.weight"].copy_(w["P"])
        p[f"{pre}.attn._original_component.v._original_component.weight"].copy_(w["W_V"])
        p[f"{pre}.attn._original_component.o._original_component.weight"].copy_(w["W_O"])
        p[f"{pre}.mlp._original_component.fc_in._original_component.weight"].copy_(w["W_in"])
        p[f"{pre}.mlp._original_component.fc_in._original_component.bias"].copy_(w["b_in"])
        p[f"{pre}.mlp._original_component.fc_out._original_component.weight"].copy_(w["W_out"])
        p["head._original_component.weight"].copy_(w["W_U"])
    bridge = bridge.to(torch.float64)
    return _handle(bridge, "toy-known-paths", 1, h), {k: v.double() for k, v in w.items()}


def random_model(seed: int = 0, n_layers: int = 2, *, attn_only: bool = False, dtype=torch.float64) -> ModelHandle:
    """A small random model with LayerNorm and GELU MLPs (everything nonlinear)."""
    bridge = _boot(dict(n_layers=n_layers, n_heads=2, d_model=12, d_head=6, d_mlp=24, d_vocab=20, n_ctx=16,
                        attn_only=attn_only, normalization_type="LN", act_fn="gelu", seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in bridge.named_parameters():
            if t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / t.shape[-1] ** 0.5) * 1.5)
            elif "bias" in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return _handle(bridge.to(dtype), "toy-random-mlp", n_layers, 2)


def identity_saes(d: int, sites: str) -> SublayerSAEs:
    """Exact SAEs: features relu(x_k) and relu(-x_k), atoms +e_k and -e_k, no biases."""
    saes = {}
    eye = torch.eye(d)
    for s in parse_sites(sites):
        sae = SparseAutoencoder(d, 2 * d)
        with torch.no_grad():
            sae.W_E.copy_(torch.cat([eye, -eye], 1))
            sae.W_D.copy_(torch.cat([eye, -eye], 0))
        saes[s.name] = sae.requires_grad_(False)
    return SublayerSAEs(saes, info={"model": {}})


def random_saes(d: int, n_features: int, sites: str, seed: int = 0) -> SublayerSAEs:
    """Random SAEs with a real error term (n_features < d would not reconstruct anyway)."""
    g = torch.Generator().manual_seed(seed)
    saes = {}
    for s in parse_sites(sites):
        sae = SparseAutoencoder(d, n_features)
        with torch.no_grad():
            w = torch.randn(n_features, d, generator=g)
            sae.W_D.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_E.copy_(sae.W_D.T + 0.3 * torch.randn(d, n_features, generator=g))
            sae.b_E.copy_(torch.randn(n_features, generator=g) * 0.3 - 0.2)
            sae.b.copy_(torch.randn(d, generator=g) * 0.1)
        saes[s.name] = sae.requires_grad_(False)
    return SublayerSAEs(saes, info={"model": {}})


def analytic(w: dict[str, torch.Tensor], tokens: torch.Tensor, target: int) -> dict:
    """Closed-form forward pass, gradients and site-to-site Jacobians of the known-paths toy.

    Jacobians are (T*d) x (T*d) matrices J[(t', i), (t, j)] = d x_V(t)_j / d y_U(t')_i
    (row-vector convention: dx_V = dy_U @ J).
    """
    T = tokens.shape[0]
    d = w["E"].shape[1]
    A = w["E"][tokens] + w["P"][:T]
    P = torch.tril(torch.ones(T, T, dtype=torch.float64))
    P = P / P.sum(1, keepdim=True)
    W_VO = w["W_V"].T @ w["W_O"].T
    B = P @ A @ W_VO
    pre = (A + B) @ w["W_in"].T + w["b_in"]
    C = torch.relu(pre) @ w["W_out"].T
    D = A + B + C
    logits = D @ w["W_U"].T
    I_T = torch.eye(T, dtype=torch.float64)
    I_d = torch.eye(d, dtype=torch.float64)

    def block(mats) -> torch.Tensor:  # mats[t'][t] -> (T d) x (T d)
        return torch.cat([torch.cat(row, 1) for row in mats], 0)

    M = [w["W_in"].T @ torch.diag((pre[t] > 0).double()) @ w["W_out"].T for t in range(T)]
    J_BA = block([[P[t, tp] * W_VO for t in range(T)] for tp in range(T)])
    J_CA = block([[M[t] if t == tp else torch.zeros(d, d, dtype=torch.float64) for t in range(T)] for tp in range(T)])
    J_CB = J_CA.clone()
    J_I = torch.kron(I_T, I_d)
    direct = {("embed", "attn.0"): J_BA, ("embed", "mlp.0"): J_CA, ("attn.0", "mlp.0"): J_CB,
              ("embed", "resid.0"): J_I, ("attn.0", "resid.0"): J_I, ("mlp.0", "resid.0"): J_I}
    T_CA = J_CA + J_BA @ J_CB
    total = dict(direct)
    total[("embed", "mlp.0")] = T_CA
    total[("attn.0", "resid.0")] = J_I + J_CB
    total[("embed", "resid.0")] = J_I + J_BA + T_CA
    p = logits[-1].softmax(-1)
    onehot = torch.zeros_like(p)
    onehot[target] = 1.0
    g_D = torch.zeros(T, d, dtype=torch.float64)
    g_D[-1] = (p - onehot) @ w["W_U"]
    gD = g_D.reshape(-1)
    gC = J_I @ gD
    gB = J_I @ gD + J_CB @ gC
    gA = J_I @ gD + J_CA @ gC + J_BA @ gB
    grads = {"embed": gA.reshape(T, d), "attn.0": gB.reshape(T, d), "mlp.0": gC.reshape(T, d), "resid.0": g_D}
    acts = {"embed": A, "attn.0": B, "mlp.0": C, "resid.0": D}
    ce = -float(logits[-1].log_softmax(-1)[target])
    return {"acts": acts, "grads": grads, "direct": direct, "total": total, "logits": logits, "ce": ce}


def identity_features(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.relu(x), torch.relu(-x)], -1)


def analytic_edges(an: dict, up: str, down: str, which: str) -> torch.Tensor:
    """[2d, 2d] feature edges (identity SAEs) from the closed-form Jacobian ``which``."""
    J = an[which][(up, down)]
    a_u = identity_features(an["acts"][up])  # [T, 2d]
    T, two_d = a_u.shape
    d = two_d // 2
    S = torch.cat([torch.eye(d), -torch.eye(d)], 0).double()  # atoms
    E = torch.cat([torch.eye(d), -torch.eye(d)], 1).double()  # encoder
    Jr = J.reshape(T, d, T, d)
    dx = torch.einsum("ui,aibj->aubj", S, Jr)  # d x_V(b)_j / d a_u(a)
    dpre = torch.einsum("aubj,jk->aubk", dx, E)
    a_d = identity_features(an["acts"][down])
    c = an["grads"][down] @ S.T  # [T, 2d]
    return torch.einsum("au,aubk,bk->uk", a_u, dpre, (a_d > 0).double() * c)


def test_known_paths_model_matches_its_closed_form():
    model, w = known_paths_model()
    tokens = torch.tensor([3, 1, 7, 2, 9])
    an = analytic(w, tokens, target=4)
    logits = model.bridge(tokens[None])[0]
    assert torch.allclose(logits, an["logits"], atol=1e-10)
    # the MLP has both active and inactive units, so the paths through it are not trivial
    pre = (an["acts"]["embed"] + an["acts"]["attn.0"]) @ w["W_in"].T + w["b_in"]
    assert 0.2 < float((pre > 0).double().mean()) < 0.8


def test_identity_saes_reconstruct_exactly():
    saes = identity_saes(6, FOUR_SITES)
    x = torch.randn(5, 6)
    sae = saes["mlp.0"]
    assert torch.allclose(sae.decode(sae.encode(x)), x, atol=1e-6)
