"""From SAE features to one integer code per (example, head), and from codes to scores.

All-zero rows: when no SAE feature fires on a head (z = 0), the argmax is meaningless.
By default (``silent="own-code"``) such a row gets its own code, ``n_features``, so a
head that is silent on both positives and negatives shares that code between them and
earns nothing for it. ``silent="zero"`` reproduces the authors' code, where the argmax
of an all-zero row is feature 0 and silence is indistinguishable from feature 0.
"""

from __future__ import annotations

from .discretise import discretise
from .edge import cooccurrence_unique, cooccurrence_unique_reference, edge_scores
from .node import (
    STATISTICS,
    code_distance,
    code_statistic,
    node_scores,
    softmax_scores,
    unique_positive_codes,
)

__all__ = [
    "STATISTICS",
    "code_distance",
    "code_statistic",
    "cooccurrence_unique",
    "cooccurrence_unique_reference",
    "discretise",
    "edge_scores",
    "node_scores",
    "softmax_scores",
    "unique_positive_codes",
]
