"""Small native models with known structure, built without any download.

The planted-circuit model
-------------------------
A 3-layer, 4-head, attention-only transformer (d_model 32, no layer norm, uniform
causal attention) whose weights are set by hand so that the answer to "which heads
does the task use?" is known exactly:

* vocabulary: 0 = BOS, 1..15 context tokens, 16..23 signal tokens "A" (positive
  prompts), 24..31 signal tokens "B" (negative prompts); 32 / 33 are the answer and the
  wrong answer the unembedding reads out.
* residual stream: dims 0-7 carry context tokens, 8-15 signal tokens, 16-23 the outputs
  of the planted heads, 24-31 the outputs of all other heads.
* planted heads :data:`PLANTED_HEADS` read the signal (and earlier planted heads) and
  write into dims 16-23; every other head reads only context dims and other heads'
  outputs. A negative prompt is its positive with the A token replaced by a B token,
  so every non-planted head computes exactly the same thing on both prompts of a pair.
* the unembedding reads only dims 16-23, along a direction that A tokens push up and
  B tokens push down: logit(answer) - logit(wrong) is > 0 on positives and < 0 on
  negatives, and only the planted heads can move it.
"""

from __future__ import annotations

from typing import Any

from ..types import HeadId, HeadLayout
from .handle import ModelHandle

PLANTED_HEADS: tuple[HeadId, ...] = (HeadId(0, 1), HeadId(1, 2), HeadId(2, 0))
PLANTED_VOCAB = 34
PLANTED_ANSWER = 32
PLANTED_WRONG = 33
CONTEXT_TOKENS = range(1, 16)
SIGNAL_A = range(16, 24)
SIGNAL_B = range(24, 32)
_CTX, _SIG, _PLANT, _OTHER = slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 32)


def _boot_native(cfg: dict[str, Any]):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(cfg)


def _params(bridge) -> dict[str, Any]:
    return dict(bridge.named_parameters())


def planted_model(seed: int = 0) -> ModelHandle:
    """The hand-set planted-circuit model described in the module docstring."""
    import torch

    n_layers, n_heads, d_model, d_head = 3, 4, 32, 8
    cfg = dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_vocab=PLANTED_VOCAB,
        n_ctx=32,
        attn_only=True,
        normalization_type=None,
        act_fn="gelu",
        seed=seed,
    )
    bridge = _boot_native(cfg)
    g = torch.Generator().manual_seed(seed)
    p = _params(bridge)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    with torch.no_grad():
        for t in p.values():
            t.zero_()
        emb = torch.zeros(PLANTED_VOCAB, d_model)
        emb[0, _CTX] = rnd(8)
        for t in CONTEXT_TOKENS:
            emb[t, _CTX] = rnd(8)
        direction = torch.zeros(8)
        direction[0] = 3.0
        for t in SIGNAL_A:
            emb[t, _SIG] = direction + rnd(8, scale=0.5)
        for t in SIGNAL_B:
            emb[t, _SIG] = -direction + rnd(8, scale=0.5)
        p["tok_embed._original_component.weight"].copy_(emb)

        planted = set(PLANTED_HEADS)
        for layer in range(n_layers):
            prefix = f"layers.{layer}._original_component.attn._original_component"
            w_v = torch.zeros(n_heads * d_head, d_model)  # nn.Linear: [out, in]
            w_o = torch.zeros(d_model, n_heads * d_head)
            for h in range(n_heads):
                rows = slice(h * d_head, (h + 1) * d_head)
                if HeadId(layer, h) in planted:
                    # read the signal (and earlier planted heads), keep the A/B direction
                    w_v[rows, _SIG] = torch.eye(d_head) * 0.8 + rnd(d_head, 8, scale=0.2)
                    if layer > 0:
                        w_v[rows, _PLANT] = torch.eye(d_head) * 0.5 + rnd(d_head, 8, scale=0.1)
                    w_o[_PLANT, rows] = 3 * torch.eye(d_head) + rnd(8, d_head, scale=0.3)
                else:
                    w_v[rows, _CTX] = rnd(d_head, 8, scale=0.6)
                    w_v[rows, _OTHER] = rnd(d_head, 8, scale=0.2)
                    w_o[_OTHER, rows] = rnd(8, d_head, scale=0.6)
            p[f"{prefix}.v._original_component.weight"].copy_(w_v)
            p[f"{prefix}.o._original_component.weight"].copy_(w_o)
            # W_Q = W_K = 0: uniform attention over the causal prefix.

        unembed = torch.zeros(PLANTED_VOCAB, d_model)
        read = torch.zeros(8)
        read[0] = 1.0
        unembed[PLANTED_ANSWER, _PLANT] = read
        unembed[PLANTED_WRONG, _PLANT] = -read
        p["head._original_component.weight"].copy_(unembed)

    return ModelHandle(
        bridge=bridge,
        spec="toy-planted",
        family="toy-planted",
        layout=HeadLayout(n_layers, n_heads),
        tokenizer=None,
        prepend_bos=False,
        info={"planted_heads": [h.name for h in PLANTED_HEADS], "seed": seed},
    )


def random_toy_model(
    seed: int = 0, n_layers: int = 2, n_heads: int = 4, d_model: int = 32, d_vocab: int = 64
) -> ModelHandle:
    """A small random attention-only TL-native model (no tokenizer)."""
    cfg = dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_model // n_heads,
        d_vocab=d_vocab,
        n_ctx=64,
        attn_only=True,
        normalization_type="LN",
        act_fn="gelu",
        seed=seed,
    )
    bridge = _boot_native(cfg)
    return ModelHandle(
        bridge=bridge,
        spec="toy-random",
        family="toy-random",
        layout=HeadLayout(n_layers, n_heads),
        tokenizer=None,
        prepend_bos=False,
        info={"seed": seed},
    )
