"""A loaded model plus what circuitscan needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CircuitscanError
from ..types import HeadLayout


@dataclass
class ModelHandle:
    """A ``TransformerBridge`` with its spec, head layout and tokenisation defaults.

    Attributes:
        bridge: the TransformerLens bridge (an ``nn.Module`` with hook points).
        spec: the spec it was loaded from (``"smollm2-135m"``, a path, a hub name).
        family: the model family ground truths are tied to (``"gpt2"``, ``"smollm2-135m"``...).
        layout: n_layers x n_heads, read from the model's config.
        tokenizer: a Hugging Face tokenizer, or None for toy models fed token ids.
        prepend_bos: whether prompts get the tokenizer's BOS token in front.
    """

    bridge: Any
    spec: str
    family: str
    layout: HeadLayout
    tokenizer: Any | None
    prepend_bos: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_head(self) -> int:
        return int(self.bridge.cfg.d_head)

    def hook_z(self, layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    def w_o(self, layer: int):
        """Per-head output weights of one layer: [n_heads, d_head, d_model]."""
        return self.bridge.W_O[layer]

    def require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise CircuitscanError(
                f"{what} needs a tokenizer, but model {self.spec!r} has none "
                "(toy models take token ids; use a task that builds token ids, e.g. 'planted')"
            )
        return self.tokenizer

    def to_tokens(self, texts: list[str], prepend_bos: bool | None = None):
        """Tokenise without padding; returns a list of token-id lists."""
        tok = self.require_tokenizer("tokenising text")
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        out = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False)
            if bos and tok.bos_token_id is not None:
                ids = [tok.bos_token_id, *ids]
            out.append(ids)
        return out

    def single_token_id(self, text: str) -> int | None:
        """The id of ``text`` if it is exactly one token for this tokenizer, else None."""
        tok = self.require_tokenizer("checking single tokens")
        ids = tok.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "family": self.family,
            **self.layout.to_dict(),
            "d_model": self.d_model,
            "prepend_bos": self.prepend_bos,
            **self.info,
        }
