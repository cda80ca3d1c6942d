"""Inference side of the SAE: z = ReLU(W_E (h - b) + b_E), h_hat = W_D z + b."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

WEIGHT_NAMES = ("W_E", "b_E", "W_D", "b")


def encode_with(w: Mapping[str, Tensor], h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_features"]:
    """The SAE encoder z = ReLU((h - b) W_E + b_E) with weights given as ``{"W_E", "b_E", "b"}``."""
    return torch.relu((h - w["b"]) @ w["W_E"] + w["b_E"])


def decode_with(w: Mapping[str, Tensor], z: Float[Tensor, "... n_features"]) -> Float[Tensor, "... d_in"]:
    """The SAE decoder h_hat = z W_D + b with weights given as ``{"W_D", "b"}``."""
    return z @ w["W_D"] + w["b"]


def detached_weights(sae: SparseAutoencoder, dtype: torch.dtype) -> dict[str, Tensor]:
    """``{"W_E", "b_E", "W_D", "b"}`` of ``sae``, detached and cast to ``dtype`` (for hooks and graphs)."""
    return {k: getattr(sae, k).detach().to(dtype) for k in WEIGHT_NAMES}


class SparseAutoencoder(nn.Module):
    """Tied-bias ReLU sparse autoencoder with unit-norm dictionary atoms.

    Weights are stored for row-major matmuls: ``W_E`` is [d_in, n_features] and the
    dictionary ``W_D`` is [n_features, d_in], one atom per row.
    """

    def __init__(self, d_in: int, n_features: int) -> None:
        super().__init__()
        self.d_in = d_in
        self.n_features = n_features
        self.W_E = nn.Parameter(torch.zeros(d_in, n_features))
        self.b_E = nn.Parameter(torch.zeros(n_features))
        self.W_D = nn.Parameter(torch.zeros(n_features, d_in))
        self.b = nn.Parameter(torch.zeros(d_in))

    def encode(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_features"]:
        return encode_with({"W_E": self.W_E, "b_E": self.b_E, "b": self.b}, h)

    def decode(self, z: Float[Tensor, "... n_features"]) -> Float[Tensor, "... d_in"]:
        return decode_with({"W_D": self.W_D, "b": self.b}, z)

    def forward(self, h: Float[Tensor, "... d_in"]) -> tuple[Tensor, Tensor]:
        z = self.encode(h)
        return self.decode(z), z

    @torch.no_grad()
    def atom_norms(self) -> Float[Tensor, " n_features"]:
        return self.W_D.norm(dim=1)
