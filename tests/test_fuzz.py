"""Property-based fuzzing: any input to the parsers and the public API gives a result or a
CircuitscanError, never another exception (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from circuitscan.errors import CircuitscanError  # noqa: E402

# a few seconds by default; CIRCUITSCAN_FUZZ_EXAMPLES=2000 for a longer hunt
FAST = settings(max_examples=int(os.environ.get("CIRCUITSCAN_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["positive", "negative", "answer", "wrong_answer", "heads", "x"]), inner, max_size=4),
    max_leaves=12,
)
rows = st.fixed_dictionaries(
    {"positive": st.lists(st.integers(-2, 40), max_size=6) | st.text(max_size=6),
     "negative": st.lists(st.integers(-2, 40), max_size=6) | st.text(max_size=6)},
    optional={"answer": st.integers(-2, 40) | st.lists(st.integers(0, 40), max_size=2) | st.text(max_size=3),
              "wrong_answer": st.integers(-2, 40) | st.none()},
)


def _ok_or_ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CircuitscanError:
        return None


@FAST
@given(lines=st.lists(rows | json_values, min_size=0, max_size=5), suffix=st.sampled_from([".jsonl", ".csv"]),
       raw=st.binary(max_size=40))
def test_task_files_parse_or_refuse(planted, tmp_path_factory, lines, suffix, raw):
    from circuitscan.tasks.custom import load_task_file

    path = tmp_path_factory.mktemp("t") / f"task{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    else:
        path.write_bytes(b"positive,negative,answer\n" + raw)
    result = _ok_or_ours(load_task_file, path, planted, n=3)
    if result is not None:
        assert result.n_positive >= 1 and result.positive.shape[1] == result.negative.shape[1]


@FAST
@given(data=json_values, raw=st.binary(max_size=30), spec=st.text(max_size=12))
def test_ground_truth_specs_parse_or_refuse(planted, tmp_path_factory, data, raw, spec):
    from circuitscan import circuits

    d = tmp_path_factory.mktemp("g")
    (d / "gt.json").write_text(json.dumps(data))
    (d / "raw.json").write_bytes(raw)
    for s in (str(d / "gt.json"), str(d / "raw.json"), spec):
        gt = _ok_or_ours(circuits.for_model, s, planted)
        if gt is not None:
            gt.check_layout(planted.layout)


anything = st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | st.text(max_size=10) | \
    st.lists(st.integers(), max_size=3)


@FAST
@given(spec=anything, device=anything, name=anything, n=anything, seed=anything)
def test_api_entry_points_validate_their_arguments(planted, spec, device, name, n, seed):
    import circuitscan as cs

    if isinstance(spec, str) or isinstance(device, str):  # a string spec may name a hub model: not offline
        spec, device = 123, "cpu"
    _ok_or_ours(cs.load_model, spec, device=device)
    prompts = _ok_or_ours(cs.build_task, name, planted, n, seed=seed)
    assert prompts is None or prompts.n_positive >= 1
    _ok_or_ours(cs.build_task, "planted", name, 4)
    _ok_or_ours(cs.discover, planted, name)
    _ok_or_ours(cs.discover, name, None)


@FAST
@given(values=st.dictionaries(st.sampled_from(["n_features", "l1", "lr", "epochs", "train_examples", "balanced",
                                              "loss", "seed", "precision"]), anything, max_size=3),
       scoring=st.dictionaries(st.sampled_from(["silent", "count_on", "normalise", "softmax", "threshold",
                                               "edge_k"]), anything, max_size=3))
def test_configs_accept_or_refuse(values, scoring):
    from circuitscan.config import SAEConfig, ScoringConfig

    cfg = _ok_or_ours(SAEConfig, **values)
    if cfg is not None:
        assert isinstance(cfg.n_features, int) and not isinstance(cfg.n_features, bool)
        assert isinstance(cfg.epochs, int) and not isinstance(cfg.epochs, bool)
    _ok_or_ours(ScoringConfig, **scoring)
