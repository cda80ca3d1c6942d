"""Golden scores: every registered method on toy-planted and toy-induction gives the scores
it gave when this file was last regenerated (the proof that a reorganisation preserved
behaviour, issue 15).

toy-induction is trained on first use, and training on another CPU's float32 kernels gives
another model (seen between two machines of this workplace: every method's toy-induction
scores moved), so this test loads the weights pinned in ``data/toy_induction`` (trained by
``load_model("toy-induction")`` on 2026-12-08, torch 2.13.0) instead of the user's cache.

Regenerate only for an intended change of a method's numbers, and say why in the commit:

    PYTHONPATH=src python tests/test_golden_scores.py --regenerate
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_scores.json"
PINNED = DATA / "toy_induction"
TESTBEDS = {"toy-planted": "planted", "toy-induction": "induction"}


@contextmanager
def pinned_toy_induction() -> Iterator[None]:
    """Inside, ``load_model("toy-induction")`` loads the pinned weights (a cache of their own)."""
    from dataclasses import asdict

    from circuitscan.testbeds.induction import SPEC, InductionConfig

    cfg = InductionConfig()
    pinned = json.loads((PINNED / "config.json").read_text())
    if pinned["training"] != asdict(cfg):
        raise AssertionError(f"the pinned toy-induction weights are for {pinned['training']}, the testbed is now "
                             f"{asdict(cfg)}: retrain, copy the cache's files to {PINNED} and regenerate")
    old = os.environ.get("CIRCUITSCAN_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(PINNED, Path(tmp) / "testbeds" / f"{SPEC}-{cfg.key()}")
        os.environ["CIRCUITSCAN_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("CIRCUITSCAN_CACHE", None)
            else:
                os.environ["CIRCUITSCAN_CACHE"] = old


def _settings():
    from circuitscan.comparison import CompareSettings

    return CompareSettings(sp_steps=15, eap_ig_steps=3, acdc_thresholds=(0.01, 0.3), batch_size=24)


def _configs(methods: list[str]) -> dict:
    from dataclasses import replace

    from circuitscan.config import SAEConfig
    from circuitscan.methods import SAECodesConfig

    out = {}
    if "sae-codes" in methods:
        out["sae-codes"] = replace(SAECodesConfig(level="both", batch_size=24), sae=SAEConfig(epochs=40))
    return out


def compute(model_name: str) -> dict[str, dict]:
    """{method: {"node": flat head scores, "edges": {edge: score} or None}} for one testbed."""
    import torch

    from circuitscan.comparison import compare
    from circuitscan.methods import all_names
    from circuitscan.models import load_model
    from circuitscan.tasks import build_task

    torch.manual_seed(0)
    with pinned_toy_induction():
        model = load_model(model_name)
    prompts = build_task(TESTBEDS[model_name], model, 12, seed=0)
    methods = all_names()
    result = compare(model, prompts, methods, None, None, settings=_settings(), configs=_configs(methods),
                     faithfulness=False)
    return {s.method: {"node": [round(float(x), 7) for x in s.flat.tolist()],
                       "edges": None if s.edges is None else {k: round(float(v), 7) for k, v in sorted(s.edges.items())}}
            for s in result.scores}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("model_name", list(TESTBEDS))
def test_every_method_gives_its_golden_scores(model_name, golden, single_thread):
    import numpy as np

    got = compute(model_name)
    want = golden[model_name]
    missing = sorted(set(want) - set(got))
    assert not missing, f"methods with golden scores no longer produced: {missing}"
    # a method added since the last regeneration has no golden entry yet (its own tests pin it)
    for method, w in want.items():
        g = got[method]
        np.testing.assert_allclose(g["node"], w["node"], rtol=1e-4, atol=1e-6, err_msg=f"{model_name} {method} node")
        assert (g["edges"] is None) == (w["edges"] is None), method
        if w["edges"] is not None:
            assert sorted(g["edges"]) == sorted(w["edges"]), f"{model_name} {method}: edge set changed"
            np.testing.assert_allclose([g["edges"][k] for k in sorted(w["edges"])],
                                       [w["edges"][k] for k in sorted(w["edges"])], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{model_name} {method} edges")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: PYTHONPATH=src python tests/test_golden_scores.py --regenerate")
    import torch

    torch.set_num_threads(1)
    GOLDEN.write_text(json.dumps({m: compute(m) for m in TESTBEDS}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
