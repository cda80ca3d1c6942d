"""Ground truths of the testbeds, resolved by name for ``--ground-truth`` (via :mod:`circuitscan.circuits`).

Names:

``tracr-<program>``    the heads with non-zero weights of that tracr model (also
                       ``tracr``: the loaded tracr model's own); default for the task
                       ``tracr`` on a tracr model.
``toy-induction``      the trained induction model's induction and previous-token heads
                       (saved with it); default for the task ``induction`` on it.
``induction-scores``   the top k heads of the loaded model by induction score, measured
                       when asked (k = 10, at most a quarter of all heads:
                       :func:`~.head_scores.default_k`); default for the task
                       ``induction`` on models without a hand-made circuit.
                       Options after a colon: ``k=N`` (top N), ``threshold=X`` (score
                       >= X instead), ``previous=true`` (add as many previous-token
                       heads), ``n=``/``length=`` (the sequences measured on), e.g.
                       ``induction-scores:k=20`` or ``induction-scores:threshold=0.3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from . import induction, tracr
from .head_scores import head_scores, score_circuit

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import GroundTruth, HeadLayout

SCORES_NAME = "induction-scores"


def resolve(
    spec: str, layout: HeadLayout, family: str, model: ModelHandle | None = None
) -> GroundTruth | None:
    """The testbed ground truth named ``spec`` for this model, or None when ``spec`` names none."""
    key = spec.strip()
    low = key.lower()
    if low == SCORES_NAME or low.startswith(SCORES_NAME + ":"):
        return _scores_circuit(key, model, family)
    if low == "tracr" or (low.startswith("tracr-") and not low.endswith(".json")):
        return _tracr(low, family, model)
    if low == "toy-induction":
        return _induction(family, model)
    return None


def default(task: str, family: str, model: ModelHandle | None = None) -> GroundTruth | None:
    """The testbed ground truth a task uses when ``--ground-truth`` is not given (None: no default)."""
    if task == "tracr" and family.startswith("tracr-"):
        return _tracr(family, family, model)
    if task == "induction" and family == "toy-induction":
        return _induction(family, model)
    if task == "induction" and model is not None:
        try:
            return _scores_circuit(SCORES_NAME, model, family)
        except CircuitscanError:
            return None  # e.g. sequences that do not fit the context: no default, not an error
    return None


def _tracr(name: str, family: str, model: ModelHandle | None) -> GroundTruth:
    if not family.startswith(tracr.FAMILY_PREFIX):
        raise CircuitscanError(
            f"ground truth {name!r} belongs to a tracr model, but the model is {family!r}; pass the heads "
            "yourself (--ground-truth L1H2,...) to compare anyway"
        )
    wanted = family if name == "tracr" else tracr.FAMILY_PREFIX + tracr.program_name(name)
    if wanted != family:
        raise CircuitscanError(
            f"ground truth {wanted!r} belongs to model {wanted!r}, but the model is {family!r}"
        )
    if model is None or not tracr.is_tracr(model):
        model = tracr.load_tracr(family)  # from the cache written when the model was loaded
    return tracr.ground_truth(model)


def _induction(family: str, model: ModelHandle | None) -> GroundTruth:
    if family != induction.SPEC:
        raise CircuitscanError(
            f"ground truth {induction.SPEC!r} belongs to model {induction.SPEC!r}, but the model is {family!r}; "
            f"use --ground-truth {SCORES_NAME} for this model's own induction heads"
        )
    if model is None or "ground_truth" not in model.info:
        model = induction.load_induction_model()
    return induction.ground_truth(model)


def parse_scores_spec(spec: str) -> dict[str, Any]:
    """``induction-scores:k=20,previous=true`` -> {"k": 20, "previous": True}."""
    _, _, rest = spec.partition(":")
    out: dict[str, Any] = {}
    kinds = {"k": int, "threshold": float, "previous": bool, "n": int, "length": int}
    for item in (p.strip() for p in rest.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in kinds:
            raise CircuitscanError(
                f"cannot read {item!r} in {spec!r}: options are k=N, threshold=X, previous=true|false, n=N, "
                f"length=N (e.g. {SCORES_NAME}:k=20)"
            )
        v = value.strip().lower()
        try:
            if kinds[key] is bool:
                if v not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[key] = v in ("true", "1", "yes")
            else:
                out[key] = kinds[key](v)
        except ValueError:
            raise CircuitscanError(
                f"{spec!r}: {key} must be a {kinds[key].__name__}, got {value!r}"
            ) from None
    return out


def _scores_circuit(spec: str, model: ModelHandle | None, family: str) -> GroundTruth:
    opts = parse_scores_spec(spec)
    if model is None:
        raise CircuitscanError(
            f"ground truth {SCORES_NAME!r} measures the loaded model's heads, but no model was given "
            "to measure (circuits.resolve(..., model=model) or circuits.for_model)"
        )
    scores = head_scores(
        model, n=opts.get("n", 20), length=opts.get("length", 10 if _small(model) else 20)
    )
    return score_circuit(
        scores,
        k=opts.get("k"),
        threshold=opts.get("threshold"),
        previous_token=opts.get("previous", False),
        name=SCORES_NAME if spec.strip().lower() == SCORES_NAME else spec.strip(),
        model=family,
    )


def _small(model: ModelHandle) -> bool:
    n_ctx = int(getattr(model.bridge.cfg, "n_ctx", 0) or 0)
    return 0 < n_ctx < 41
