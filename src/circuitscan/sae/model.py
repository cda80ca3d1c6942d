"""Inference side of the SAE: z = ReLU(W_E (h - b) + b_E), h_hat = W_D z + b."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


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
        return torch.relu((h - self.b) @ self.W_E + self.b_E)

    def decode(self, z: Float[Tensor, "... n_features"]) -> Float[Tensor, "... d_in"]:
        return z @ self.W_D + self.b

    def forward(self, h: Float[Tensor, "... d_in"]) -> tuple[Tensor, Tensor]:
        z = self.encode(h)
        return self.decode(z), z

    @torch.no_grad()
    def atom_norms(self) -> Float[Tensor, " n_features"]:
        return self.W_D.norm(dim=1)
