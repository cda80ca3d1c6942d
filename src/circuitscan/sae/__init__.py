"""The sparse autoencoder of O'Neill & Bui (METHOD.md section 3): model, training, I/O."""

from __future__ import annotations

from .calibrate import calibrate_l1
from .ensemble import EnsembleFit, train_ensemble
from .fitting import fit
from .io import load_sae, save_sae
from .model import SparseAutoencoder
from .train import TrainResult, select_train_examples, train_sae

__all__ = ["EnsembleFit", "SparseAutoencoder", "calibrate_l1", "train_ensemble", "TrainResult", "load_sae", "save_sae", "fit", "select_train_examples", "train_sae"]
