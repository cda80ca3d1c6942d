"""The report: figure functions, the HTML page and the ``report`` command.

Two kinds of run directory are used: real ``discover`` runs on the toy model with a
planted circuit (L0H1, L1H2, L2H0), and synthetic run directories written here
against the schema of docs/RUN_DIRECTORY.md, for the keys other commands add
(faithfulness, circuit performance, comparison) and for layouts of 4 to 48 layers.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from circuitscan.errors import CircuitscanError
from circuitscan.report import figures as F
from circuitscan.report import sae_figures, write_report
from circuitscan.report.html import fmt
from circuitscan.report.rundata import CodesData, encode, load_run
from circuitscan.rundir import read_run_json, write_json

PLANTED = ["L0H1", "L1H2", "L2H0"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# run directories
# ---------------------------------------------------------------------------------------
@contextmanager
def one_torch_thread():
    """Train the toy SAE on one thread: on a shared 2-core machine that is ~20x faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _discover(planted, prompts, out: Path, *, level: str, save_activations: bool, **kw) -> Path:
    from circuitscan.circuits import default_for
    from circuitscan.run import discover

    gt = default_for(prompts.task, planted.family)
    assert gt is not None and sorted(h.name for h in gt.heads) == PLANTED
    with one_torch_thread():
        discover(planted, prompts, level=level, ground_truth=gt, out=out, save_activations=save_activations, **kw)
    return out


@pytest.fixture(scope="module")
def toy_run(planted, planted_prompts, tmp_path_factory) -> Path:
    """A real discover run, node + edge level, with activations saved."""
    return _discover(planted, planted_prompts, tmp_path_factory.mktemp("toy") / "run", level="both",
                     save_activations=True)


@pytest.fixture(scope="module")
def node_run(planted, planted_prompts, tmp_path_factory) -> Path:
    """A real discover run with only the node-level method, one SAE (not the preset's five) and no activations."""
    from dataclasses import replace

    from circuitscan.config import default_sae

    return _discover(planted, planted_prompts, tmp_path_factory.mktemp("node") / "run", level="node",
                     save_activations=False, sae=replace(default_sae(), n_seeds=1))


def _names(n_layers: int, n_heads: int) -> list[str]:
    return [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]


def make_run(
    path: Path,
    n_layers: int = 4,
    n_heads: int = 4,
    *,
    methods: tuple[str, ...] = ("sae-codes",),
    gt: tuple[str, ...] = ("L1H2", "L3H0"),
    with_pairs: bool = False,
    with_evaluate: bool = False,
    with_compare: bool = False,
    seed: int = 0,
) -> Path:
    """A synthetic run directory with every optional key filled with stated numbers."""
    rng = np.random.default_rng(seed)
    names = _names(n_layers, n_heads)
    n = len(names)
    gt_mask = np.array([name in gt for name in names])
    path.mkdir(parents=True)
    write_json(path / "config.json", {
        "circuitscan_version": "0.1.0", "command": "compare" if with_compare else "discover",
        "model": {"spec": f"synthetic-{n_layers}x{n_heads}", "n_layers": n_layers, "n_heads": n_heads},
        "task": {"name": "synthetic", "n_positive": 20, "n_negative": 20, "seq_len": 8},
        "sae": {"n_features": 16, "l1": 0.02}, "level": "node",
        "ground_truth": {"name": "synthetic-gt", "model": "synthetic", "heads": list(gt),
                         "classes": {"all": list(gt)}},
    })
    entries, gt_metrics, circuits = {}, {}, {}
    for j, m in enumerate(methods):
        raw = rng.integers(0, 5, size=n).astype(float) + 6.0 * gt_mask
        scores = np.exp(raw) / np.exp(raw).sum()
        entry = {"heads": names, "scores": scores.tolist(), "rank": list(range(1, n + 1)),
                 "wall_time_s": 1.5 + j, "forward_passes": 2 + j, "backward_passes": j}
        if m.startswith("sae-codes"):
            entry["unique_positive_codes"] = raw.tolist()
        if with_pairs and j == 0:
            U = rng.integers(0, 4, size=(n, n)).astype(float)
            U = U + U.T + 5.0 * (gt_mask[:, None] & gt_mask[None, :])
            entry["pairs"] = {"matrix": U.tolist()}
            entry["top_pairs"] = [[gt[0], gt[1], float(U[names.index(gt[0]), names.index(gt[1])])]]
        if m == "eap":  # q/k/v inputs of one head pair merge into one drawn edge; "input" is no head
            entry["edges"] = {f"{gt[0]}->{gt[1]}.q": 0.9, f"{gt[0]}->{gt[1]}.k": -0.95, "input->L0H0.v": 0.5,
                              f"{names[0]}->{gt[1]}.v": 0.2, f"{names[1]}->{gt[1]}.v": 0.0}
        entries[m] = entry
        auc = round(0.97 - 0.1 * j, 4)
        gt_metrics[m] = {"ground_truth": "synthetic-gt", "n_heads": n, "n_true": len(gt), "auc": auc,
                         "best_f1": 0.8 - 0.05 * j, "best_threshold": 1e-3, "precision": 0.75, "recall": 1.0,
                         "circuit_size": len(gt) + 1, "tpr_tnr_hmean": 0.9, "at_threshold": None,
                         "roc": {"fpr": [0.0, 0.1 * j, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0],
                                 "thresholds": ["inf", 0.5, 0.1, 0.0]}}
        circuits[m] = {"threshold": 1e-3, "rule": "best-F1 threshold against the ground truth",
                       "heads": [*gt, names[0]], "size": len(gt) + 1}
    write_json(path / "scores.json", {"layout": {"n_layers": n_layers, "n_heads": n_heads}, "methods": entries})
    metrics = {"timings_s": {"activations": 1.25, "sae_train": 2.5, "evaluate": 0.125},
               "sae": {"final_mse": 0.0123, "final_l0": 3.5, "losses": [2.0, 1.0, 0.5, 0.4], "train_indices": [0, 1],
                       "seconds": 2.5},
               "circuits": circuits, "ground_truth": gt_metrics}
    if with_evaluate:
        sizes = [1, 2, 4, 8, n]
        metrics["faithfulness"] = {
            "ablation": "mean", "metric": "logit_diff",
            "curves": {m: {"sizes": sizes, "fractions": [s / n for s in sizes],
                           "values": [0.1 * (j + 1), 0.4, 0.7, 0.9, 1.0],
                           "random_mean": [0.0, 0.05, 0.1, 0.3, 1.0], "random_std": [0.02, 0.05, 0.08, 0.1, 0.0]}
                       for j, m in enumerate(methods)},
            "cpr": {m: 0.81 - 0.1 * j for j, m in enumerate(methods)},
            "cmd": {m: 0.12 + 0.1 * j for j, m in enumerate(methods)},
        }
        metrics["circuit_performance"] = {
            "ablation": "mean", "metrics": ["logit_diff"],
            "rows": [{"name": "clean model", "n_heads": n, "metrics": {"logit_diff": 3.55}, "normalised": {"logit_diff": 1.0}},
                     {"name": "sae-codes circuit", "n_heads": 5, "metrics": {"logit_diff": 3.62},
                      "normalised": {"logit_diff": 1.0099}},
                     {"name": "random circuits", "n_heads": 5, "metrics": {"logit_diff": -2.23},
                      "normalised": {"logit_diff": 0.1859}, "std": {"logit_diff": 0.41}}],
        }
    if with_compare:
        metrics["comparison"] = {"rows": [
            {"method": m, "node_auc": gt_metrics[m]["auc"], "edge_auc": 0.66 if m == "eap" else None,
             "head_auc_from_pairs": None, "cpr": 0.81, "cmd": 0.12, "best_f1_size": 4, "wall_time_s": 1.5 + j,
             "forward_passes": 2 + j, "backward_passes": j, "roc_source": "heads"} for j, m in enumerate(methods)]}
        metrics["edge_ground_truth"] = {"eap": {"auc": 0.66, "n_edges": 120, "n_true": 7}} if "eap" in methods else {}
    write_json(path / "metrics.json", metrics)
    return path


def add_codes_and_activations(path: Path, *, n_examples: int = 20, d_model: int = 6, n_features: int = 16,
                              seed: int = 0) -> None:
    """codes.safetensors, sae.safetensors and activations.safetensors for a synthetic run."""
    from safetensors.numpy import save_file

    run = load_run(path)
    n = run.layout.n_total
    rng = np.random.default_rng(seed)
    labels = np.arange(n_examples) < n_examples // 2
    x = rng.normal(size=(n_examples, n, d_model)).astype(np.float32)
    w = {"W_E": rng.normal(size=(d_model, n_features)).astype(np.float32),
         "b_E": np.zeros(n_features, np.float32), "W_D": rng.normal(size=(n_features, d_model)).astype(np.float32),
         "b": np.zeros(d_model, np.float32)}
    z = encode({k: v.astype(np.float64) for k, v in w.items()}, x)
    codes = np.where(z.max(-1) > 0, z.argmax(-1), n_features)
    save_file({"x": x, "labels": labels.astype(np.int64)}, str(path / "activations.safetensors"))
    save_file(w, str(path / "sae.safetensors"), metadata={"d_in": str(d_model)})
    save_file({"codes": codes.astype(np.int64), "labels": labels.astype(np.int64),
               "count_mask": np.ones(n_examples, np.int64)}, str(path / "codes.safetensors"),
              metadata={"n_codes": str(n_features + 1)})


# ---------------------------------------------------------------------------------------
# helpers to look inside figures and files
# ---------------------------------------------------------------------------------------
def _svg_text(svg: Path) -> str:
    root = ET.parse(svg).getroot()  # also proves the SVG is well-formed
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def _check_files(png: Path, svg: Path, title: str) -> str:
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 150
    text = _svg_text(svg)
    for line in title.split("\n"):
        assert line in text, f"title line {line!r} not in {svg.name}"
    return text


def _gt_rectangles(ax) -> list[tuple[int, int]]:
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    out = []
    for p in ax.patches:
        if isinstance(p, Rectangle) and not p.get_fill() and to_hex(p.get_edgecolor()) == F.GT_COLOR:
            x, y = p.get_xy()
            out.append((round(y + 0.5), round(x + 0.5)))  # (layer, head)
    return sorted(out)


def _scatter_sizes(ax) -> list[int]:
    from matplotlib.collections import PathCollection

    return [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]


def _draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _overlaps(labels, renderer, axis: str) -> int:
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
    boxes.sort(key=lambda b: b.y0 if axis == "y" else b.x0)
    bad = 0
    for a, b in zip(boxes, boxes[1:], strict=False):
        if (axis == "y" and b.y0 < a.y1 - 0.5) or (axis == "x" and b.x0 < a.x1 - 0.5):
            bad += 1
    return bad


# ---------------------------------------------------------------------------------------
# each figure on the real toy run: PNG + SVG, title, head count
# ---------------------------------------------------------------------------------------
def test_toy_run_supports_every_figure(toy_run):
    names = [name for _, name, _, _ in F.figure_specs(load_run(toy_run), tsne=True)]
    assert names == [
        "heatmap-sae-codes", "heatmap-sae-codes-pairs", "unique-code-difference", "roc",
        "circuit-sae-codes", "circuit-sae-codes-pairs", "pairs-sae-codes-pairs", "features-pca", "features-tsne",
        "head-pca", "top-code-histograms", "sae-loss",
    ]


@pytest.mark.parametrize("method", ["sae-codes", "sae-codes-pairs"])
def test_score_heatmap(toy_run, tmp_path, method):
    run = load_run(toy_run)
    fig = F.score_heatmap(run, method)
    ax = fig.axes[0]
    grid = np.asarray(ax.images[0].get_array())
    assert grid.shape == (3, 4)  # every head drawn, layers as rows
    values, _ = run.methods[method].display_values()
    np.testing.assert_allclose(grid.ravel(), values)
    assert _gt_rectangles(ax) == [(0, 1), (1, 2), (2, 0)]
    assert len(fig.axes) == 2  # the colour bar
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1", "L2"]
    title = fig.get_suptitle()
    assert title.startswith(method)
    _check_files(*F.save_figure(fig, tmp_path, "h"), title)


def test_unique_code_difference(toy_run, tmp_path):
    run = load_run(toy_run)
    fig = F.unique_code_difference(run)
    ax = fig.axes[0]
    bars = [p for p in ax.patches]
    assert len(bars) == 12
    up, un = F.unique_code_counts(run.codes)
    assert sorted(b.get_height() for b in bars) == sorted((up - un).tolist())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(labels) == sorted(run.layout.names())  # few heads: every one named
    text = _check_files(*F.save_figure(fig, tmp_path, "d"), fig.get_suptitle())
    assert "L1H2" in text


def test_unique_counts_match_the_scores_of_a_one_sae_run(node_run):
    run = load_run(node_run)
    up, _ = F.unique_code_counts(run.codes)
    np.testing.assert_array_equal(up, run.methods["sae-codes"].extras["unique_positive_codes"])
    assert "SAEs" not in F.unique_code_difference(run).axes[0].get_title()


def test_difference_chart_of_an_ensemble_says_whose_codes_it_counts(toy_run):
    run = load_run(toy_run)  # the preset: 5 SAEs, their mean count in the scores, the first's codes on disk
    n = run.metrics["sae"]["n_seeds"]
    assert n == 5
    fig = F.unique_code_difference(run)
    assert f"the codes of the first of {n} SAEs (seed 0)" in fig.axes[0].get_title().replace("\n", " ")


def test_unique_code_counts_known_answer():
    # head 0: positives {1, 2}, negatives {2, 3} -> 1 positive-only, 1 negative-only
    # head 1: positives {5}, negatives {5}; the uncounted example's code 9 is ignored
    codes = np.array([[1, 5], [2, 5], [2, 5], [3, 5], [7, 9]])
    labels = np.array([True, True, False, False, True])
    mask = np.array([True, True, True, True, False])
    up, un = F.unique_code_counts(CodesData(codes, labels, mask, n_codes=10))
    assert up.tolist() == [1, 0] and un.tolist() == [1, 0]


def test_roc_curves(toy_run, tmp_path):
    run = load_run(toy_run)
    fig = F.roc_curves(run)
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[0].startswith("chance")
    auc = read_run_json(toy_run, "metrics.json")["ground_truth"]["sae-codes"]["auc"]
    assert f"sae-codes  AUC {auc:.3f}" in labels
    assert any(lbl.startswith("sae-codes-pairs") for lbl in labels)
    assert "false-positive rate" in ax.get_xlabel() and "true-positive rate" in ax.get_ylabel()
    _check_files(*F.save_figure(fig, tmp_path, "r"), fig.get_suptitle())


@pytest.mark.parametrize("method", ["sae-codes", "sae-codes-pairs"])
def test_circuit_diagram(toy_run, tmp_path, method):
    run = load_run(toy_run)
    fig = F.circuit_diagram(run, method)
    ax = fig.axes[0]
    sizes = _scatter_sizes(ax)
    assert sizes == [12, 3]  # every head a node; ground truth ringed
    nodes = [c for c in ax.collections if len(c.get_offsets()) == 12][0]
    thick = np.flatnonzero(np.asarray(nodes.get_linewidths()) > 1.0)
    circuit = read_run_json(toy_run, "metrics.json")["circuits"][method]["heads"]
    assert sorted(run.layout.head(int(i)).name for i in thick) == sorted(circuit)
    assert ax.yaxis_inverted()  # layer 0 on top
    text = _check_files(*F.save_figure(fig, tmp_path, "c"), fig.get_suptitle())
    for name in circuit:
        assert name in text  # circuit heads are named


def test_circuit_diagram_draws_top_pairs(toy_run):
    run = load_run(toy_run)
    from matplotlib.patches import FancyArrowPatch

    fig = F.circuit_diagram(run, "sae-codes-pairs")
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert 0 < len(arrows) <= 20
    assert len(arrows) == min(20, len(run.methods["sae-codes-pairs"].top_pairs))


def test_pair_matrix(toy_run, tmp_path):
    run = load_run(toy_run)
    fig = F.pair_matrix(run, "sae-codes-pairs")
    u_ax, gt_ax = fig.axes[0], fig.axes[1]
    U = np.asarray(u_ax.images[0].get_array())
    np.testing.assert_array_equal(U, run.methods["sae-codes-pairs"].pairs)
    G = np.asarray(gt_ax.images[0].get_array())
    assert G.shape == (12, 12)
    idx = [run.layout.index(h) for h in PLANTED]
    assert G[idx[0], idx[1]] == 2 and G[idx[0], 0] == 1 and G[0, 3] == 0
    text = _check_files(*F.save_figure(fig, tmp_path, "p"), fig.get_suptitle())
    assert "L2H3" in text  # 12 heads: every one named


def test_gt_pair_matrix_known_answer():
    gt = np.array([True, False, True])
    assert F.gt_pair_matrix(gt).tolist() == [[2, 1, 2], [1, 0, 1], [2, 1, 2]]


def test_feature_projection_pca(toy_run, tmp_path):
    run = load_run(toy_run)
    fig = F.feature_projection(run, "pca")
    a1, a2 = fig.axes[0], fig.axes[1]
    n_points = 80 * 12  # every (example, head) of the toy run
    assert _scatter_sizes(a1) == [n_points] and _scatter_sizes(a2) == [n_points]
    assert a1.get_xlabel().startswith("PC1") and a1.get_ylabel().startswith("PC2")
    assert len(fig.axes) == 3  # colour bar by head
    _check_files(*F.save_figure(fig, tmp_path, "f"), fig.get_suptitle())


def test_feature_projection_tsne_subsamples(toy_run, tmp_path, monkeypatch):
    monkeypatch.setattr(sae_figures, "MAX_TSNE_POINTS", 150)  # the constant lives where feature_projection reads it
    fig = F.feature_projection(load_run(toy_run), "tsne")
    assert _scatter_sizes(fig.axes[0]) == [150]
    assert "t-SNE" in fig.get_suptitle() and "150 of 960" in fig.get_suptitle()
    _check_files(*F.save_figure(fig, tmp_path, "t"), fig.get_suptitle())


def test_feature_projection_rejects_unknown_method(toy_run):
    with pytest.raises(CircuitscanError, match="pca.*tsne"):
        F.feature_projection(load_run(toy_run), "umap")


def test_head_projections_and_histograms_show_the_top_heads(toy_run, tmp_path):
    run = load_run(toy_run)
    top = [run.layout.head(int(i)).name for i in run.methods["sae-codes"].ranking()[:4]]
    assert sorted(top[:3]) == PLANTED
    fig = F.head_projections(run, "sae-codes")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [f"{h} (rank {r})" for r, h in enumerate(top, 1)]
    assert all(s == [80] for s in (_scatter_sizes(ax) for ax in fig.axes))
    _check_files(*F.save_figure(fig, tmp_path, "hp"), fig.get_suptitle())

    fig = F.top_code_histograms(run, "sae-codes")
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == top[:3]
    for ax in fig.axes:
        assert ax.get_xlabel().startswith("activation of feature") and ax.get_ylabel() == "examples"
    _check_files(*F.save_figure(fig, tmp_path, "th"), fig.get_suptitle())


def test_planted_heads_top_code_separates_positives(toy_run):
    """Fig. 31's point on the toy model: the top code fires on positives, not on negatives."""
    run = load_run(toy_run)
    z = run.features
    _, labels = run.activations
    for name in PLANTED:
        h = run.layout.index(name)
        c = F.top_code_of_head(run.codes, h, z.shape[2])
        assert c is not None
        assert z[labels, h, c].min() > z[~labels, h, c].max()


def test_top_code_of_head_skips_silent_code_and_uncounted_examples():
    codes = np.array([[16], [16], [16], [3], [3], [5], [5], [5]])
    labels = np.array([True, True, True, True, True, True, False, False])
    mask = np.array([True, True, True, True, True, True, True, False])
    # code 16 (= n_features: nothing fired) is the most common but no feature; 3 beats 5 on counted positives
    assert F.top_code_of_head(CodesData(codes, labels, mask, 17), 0, n_features=16) == 3
    assert F.top_code_of_head(CodesData(codes[:3], labels[:3], mask[:3], 17), 0, n_features=16) is None


def test_numpy_encoder_matches_the_sae(toy_run):
    import torch

    from circuitscan.sae import load_sae

    run = load_run(toy_run)
    sae, _ = load_sae(toy_run / "sae.safetensors")
    x, _ = run.activations
    with torch.no_grad():
        expected = sae.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run.features, expected, rtol=1e-4, atol=1e-5)


def test_saved_activations_are_the_runs(toy_run, planted, planted_prompts):
    from circuitscan.activations import head_outputs

    run = load_run(toy_run)
    x, labels = run.activations
    acts = head_outputs(planted, planted_prompts)
    np.testing.assert_allclose(x, acts.x.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, acts.labels.numpy())
    np.testing.assert_array_equal(labels, run.codes.labels)


def test_pca_2d_known_answer():
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    X = t[:, None] * direction[None, :] + 1e-6 * rng.normal(size=(200, 3))
    proj, ratio = F.pca_2d(X)
    assert ratio[0] > 0.999999
    assert abs(np.corrcoef(proj[:, 0], t)[0, 1]) > 0.999999


def test_sae_loss(toy_run, tmp_path):
    run = load_run(toy_run)
    fig = F.sae_loss(run)
    line = fig.axes[0].get_lines()[0]
    assert len(line.get_xdata()) == len(run.metrics["sae"]["losses"])
    _check_files(*F.save_figure(fig, tmp_path, "s"), fig.get_suptitle())


# ---------------------------------------------------------------------------------------
# figures for keys other commands write (synthetic run directories)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False])
def test_faithfulness_curves_with_random_bands(tmp_path, shared):
    from matplotlib.collections import PolyCollection

    methods = ("sae-codes", "eap", "acdc")
    path = make_run(tmp_path / "r", methods=methods, with_evaluate=True)
    if not shared:  # each method its own random baseline
        metrics = read_run_json(path, "metrics.json")
        for j, c in enumerate(metrics["faithfulness"]["curves"].values()):
            c["random_mean"] = [v + 0.01 * j for v in c["random_mean"]]
        write_json(path / "metrics.json", metrics)
    run = load_run(path)
    fig = F.faithfulness_curves(run)
    ax = fig.axes[0]
    labelled = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labelled == list(methods)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == (1 if shared else len(methods))  # a shared baseline is drawn once
    first = [ln for ln in ax.get_lines() if ln.get_label() == "sae-codes"][0]
    assert list(first.get_xdata()) == [1, 2, 4, 8, 16]
    assert "logit_diff" in fig.get_suptitle() and "mean ablation" in ax.get_title()
    assert "circuit size" in ax.get_xlabel() and "faithfulness" in ax.get_ylabel()
    _check_files(*F.save_figure(fig, tmp_path, "fa"), fig.get_suptitle())


def test_missing_sections_raise_and_are_left_out(node_run):
    run = load_run(node_run)
    with pytest.raises(CircuitscanError, match="faithfulness"):
        F.faithfulness_curves(run)
    with pytest.raises(CircuitscanError, match="activations"):
        F.feature_projection(run)
    with pytest.raises(CircuitscanError, match="pair matrix"):
        F.pair_matrix(run, "sae-codes")
    names = [name for _, name, _, _ in F.figure_specs(run, tsne=True)]
    assert names == ["heatmap-sae-codes", "unique-code-difference", "roc", "circuit-sae-codes", "sae-loss"]


def test_eap_edges_are_drawn_as_arrows_between_heads_only(tmp_path):
    from matplotlib.patches import FancyArrowPatch

    run = load_run(make_run(tmp_path / "r", methods=("sae-codes", "eap")))
    fig = F.circuit_diagram(run, "eap")
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 2  # L1H2->L3H0 (q and k merged) and L0H0->L3H0; zero-score and input edges dropped
    links, directed, _ = F._pair_links(run, "eap")
    assert directed and [(a, b, w) for a, b, w in links] == [(6, 12, -0.95), (0, 12, 0.2)]


@pytest.mark.parametrize("layout", [(4, 4), (12, 12), (30, 9), (40, 16)])
def test_figures_scale_from_4_to_40_layers(tmp_path, layout):
    n_layers, n_heads = layout
    run = load_run(make_run(tmp_path / "r", n_layers, n_heads, gt=("L1H2", f"L{n_layers - 1}H0"), with_pairs=True))
    for fig in (F.score_heatmap(run, "sae-codes"), F.circuit_diagram(run, "sae-codes")):
        w, h = fig.get_size_inches()
        assert 4.5 <= w <= 16.5 and 3.0 <= h <= 14.0, (w, h)
        renderer = _draw(fig)
        ax = fig.axes[0]
        ylabels = [t for t in ax.get_yticklabels() if t.get_text()]
        assert all(re.fullmatch(r"L\d+", t.get_text()) for t in ylabels)
        assert len(ylabels) >= n_layers / 2  # at least every other layer named
        assert _overlaps(ylabels, renderer, "y") == 0
        assert _overlaps(ax.get_xticklabels(), renderer, "x") == 0
        bbox = ax.get_window_extent(renderer)
        cell_px = min(bbox.width / n_heads, bbox.height / n_layers)
        assert cell_px >= 0.12 * fig.dpi  # a head is never smaller than ~0.12 in
    heat = F.score_heatmap(run, "sae-codes")
    assert np.asarray(heat.axes[0].images[0].get_array()).shape == layout
    assert _gt_rectangles(heat.axes[0]) == sorted([(1, 2), (n_layers - 1, 0)])
    pairs = F.pair_matrix(run, "sae-codes")
    renderer = _draw(pairs)
    assert _overlaps(pairs.axes[0].get_yticklabels(), renderer, "y") == 0
    assert _overlaps(pairs.axes[0].get_xticklabels(), renderer, "x") == 0
    w, h = pairs.get_size_inches()
    assert w <= 17 and h <= 8


def test_difference_chart_names_heads_when_there_are_many(tmp_path):
    path = make_run(tmp_path / "r", 30, 9)
    add_codes_and_activations(path, n_features=16)
    run = load_run(path)
    fig = F.unique_code_difference(run)
    all_ax, zoom_ax = fig.axes[0], fig.axes[1]
    assert len(all_ax.patches) == 270 and len(zoom_ax.patches) == 30
    names = [t.get_text() for t in zoom_ax.get_xticklabels()]
    assert all(re.fullmatch(r"L\d+H\d", n) for n in names) and len(names) == 30
    assert _overlaps(zoom_ax.get_xticklabels(), _draw(fig), "x") == 0


# ---------------------------------------------------------------------------------------
# the HTML report
# ---------------------------------------------------------------------------------------
class _Page(HTMLParser):
    """Collects images, links, section ids and numeric table cells of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.cells: dict[str, tuple[str, str]] = {}
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link") and "href" in a:
            self.links.append(a["href"])
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "td" and "data-key" in a:
            self._cell = (a["data-key"], a["data-value"])
            self._text = []

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells[self._cell[0]] = ("".join(self._text).strip(), self._cell[1])
            self._cell = None


def _page(run_dir: Path) -> _Page:
    p = _Page()
    p.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    return p


def _assert_self_contained(run_dir: Path, page: _Page) -> None:
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert len(page.imgs) == len(pngs) > 0
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    for href in page.links:
        assert not re.match(r"^[a-z]+://", href), href  # nothing from the network
        if href.startswith(("#", "data:")):
            continue
        assert (run_dir / href).is_file(), href
    html = (run_dir / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_report_of_a_discover_run(toy_run):
    out = write_report(toy_run)
    assert out == toy_run / "report.html"
    page = _page(toy_run)
    _assert_self_contained(toy_run, page)
    assert {"summary", "scores", "roc", "circuit", "pairs", "features", "config", "timings"} <= set(page.sections)
    assert "faithfulness" not in page.sections and "comparison" not in page.sections
    metrics = read_run_json(toy_run, "metrics.json")
    for method, m in metrics["ground_truth"].items():
        text, value = page.cells[f"metrics.ground_truth.{method}.auc"]
        assert text == f"{m['auc']:.3f}" and float(value) == m["auc"]
        assert page.cells[f"metrics.circuits.{method}.size"][0] == str(metrics["circuits"][method]["size"])
    for stage, seconds in metrics["timings_s"].items():
        assert float(page.cells[f"metrics.timings_s.{stage}"][1]) == seconds
    total = page.cells["metrics.timings_s.total"][0]
    assert abs(float(total) - sum(metrics["timings_s"].values())) < 1e-3
    for name in sorted(p.stem for p in (toy_run / "figures").glob("*.png")):
        assert (toy_run / "figures" / f"{name}.svg").is_file()


def test_report_of_a_node_only_run(node_run):
    write_report(node_run)
    page = _page(node_run)
    _assert_self_contained(node_run, page)
    assert "pairs" not in page.sections and "features" not in page.sections
    assert sorted(p.name for p in (node_run / "figures").iterdir()) == sorted(
        f"{n}.{ext}" for n in ["heatmap-sae-codes", "unique-code-difference", "roc", "circuit-sae-codes", "sae-loss"]
        for ext in ("png", "svg"))
    assert "metrics.ground_truth.sae-codes.auc" in page.cells
    assert not any(k.startswith("metrics.ground_truth.sae-codes-pairs") for k in page.cells)


def test_report_of_a_compare_run_with_several_methods(tmp_path):
    methods = ("sae-codes", "sae-codes-pairs", "eap", "acdc", "norm-diff")
    run_dir = make_run(tmp_path / "cmp", 6, 5, methods=methods, with_pairs=True, with_evaluate=True,
                       with_compare=True)
    write_report(run_dir)
    page = _page(run_dir)
    _assert_self_contained(run_dir, page)
    assert {"summary", "scores", "roc", "circuit", "pairs", "faithfulness", "comparison"} <= set(page.sections)
    figs = {p.stem for p in (run_dir / "figures").glob("*.png")}
    assert {f"heatmap-{m}" for m in methods} | {f"circuit-{m}" for m in methods} | {"roc", "faithfulness"} <= figs
    metrics = read_run_json(run_dir, "metrics.json")
    for j, row in enumerate(metrics["comparison"]["rows"]):
        assert page.cells[f"metrics.comparison.rows.{j}.node_auc"][0] == f"{row['node_auc']:.3f}"
        assert page.cells[f"metrics.comparison.rows.{j}.wall_time_s"][0] == f"{row['wall_time_s']:.3f}"
    assert page.cells["metrics.edge_ground_truth.eap.auc"][0] == "0.660"
    assert page.cells["metrics.faithfulness.cpr.sae-codes"][0] == "0.810"
    assert page.cells["metrics.circuit_performance.rows.1.metrics.logit_diff"][0] == "3.620"
    assert page.cells["metrics.circuit_performance.rows.2.metrics.logit_diff"][0] == "-2.230 ± 0.410"
    roc = F.roc_curves(load_run(run_dir))
    assert len([ln for ln in roc.axes[0].get_lines()]) == len(methods) + 1


def test_rewriting_a_report_replaces_its_figures(tmp_path):
    path = make_run(tmp_path / "r")
    (path / "figures").mkdir()
    (path / "figures" / "features-tsne.png").write_bytes(PNG_MAGIC)  # from an earlier report
    write_report(path)
    assert not (path / "figures" / "features-tsne.png").exists()
    assert (path / "figures" / "roc.png").is_file()
    assert "features-tsne" not in (path / "report.html").read_text()
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_a_failing_report_leaves_the_previous_one(tmp_path, monkeypatch):
    path = make_run(tmp_path / "r")
    write_report(path)
    before = (path / "report.html").read_bytes()
    figures_before = sorted(p.name for p in (path / "figures").iterdir())

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(F, "roc_curves", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(path)
    assert (path / "report.html").read_bytes() == before
    assert sorted(p.name for p in (path / "figures").iterdir()) == figures_before
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []


def test_bad_run_directories_are_user_errors(tmp_path):
    with pytest.raises(CircuitscanError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitscanError, match="no config.json"):
        write_report(tmp_path / "empty")
    path = make_run(tmp_path / "bad")
    scores = json.loads((path / "scores.json").read_text())
    scores["methods"]["sae-codes"]["scores"] = [0.5, 0.5]
    write_json(path / "scores.json", scores)
    with pytest.raises(CircuitscanError, match="2 scores but the layout has 16 heads"):
        write_report(path)
    assert not (path / "report.html").exists()


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "1.000"), (0.87654, "0.877"), (3, "3"), (0, "0"), (1.2e-7, "1.2e-07"), (123456.0, "1.23e+05"),
    (0.0037, "0.0037"), (0.01, "0.010"),
    ("nan", "nan"), ("inf", "∞"), (None, ""), (True, "true"), (-2.23, "-2.230"),
])
def test_number_format(value, text):
    assert fmt(value) == text


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[int, str, str]:
    from circuitscan.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_report(tmp_path):
    path = make_run(tmp_path / "r")
    code, out, _ = _cli(["report", str(path)])
    assert code == 0 and "report.html" in out
    assert (path / "report.html").is_file()
    code, _, err = _cli(["report", str(tmp_path / "missing")])
    assert code == 2 and "missing" in err and "does not exist" in err


def test_discover_report_and_save_activations(tmp_path):
    out = tmp_path / "run"
    with one_torch_thread():
        code, stdout, err = _cli(["discover", "--model", "toy-planted", "--task", "planted", "-n", "20",
                                  "--epochs", "200", "--out", str(out), "--report", "--save-activations"])
    assert code == 0, err
    assert str(out / "report.html") in stdout
    run = load_run(out)
    x, labels = run.activations
    assert x.shape == (40, 12, 32) and x.dtype == np.float32 and labels.sum() == 20
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"features-pca", "head-pca", "top-code-histograms"} <= figs


def test_report_of_a_real_compare_run(tmp_path):
    """``compare --report`` on the toy model: every method's figures and the comparison table."""
    out = tmp_path / "cmp"
    with one_torch_thread():
        code, _, err = _cli(["compare", "--model", "toy-planted", "--task", "planted", "-n", "20",
                             "--methods", "sae-codes,eap", "--faithfulness-samples", "3", "--out", str(out),
                             "--report"])
    assert code == 0, err
    page = _page(out)
    _assert_self_contained(out, page)
    assert {"summary", "scores", "roc", "circuit", "pairs", "faithfulness", "comparison"} <= set(page.sections)
    metrics = read_run_json(out, "metrics.json")
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    for method in metrics["ground_truth"]:
        assert f"heatmap-{method}" in figs and f"circuit-{method}" in figs
        text, value = page.cells[f"metrics.ground_truth.{method}.auc"]
        assert text == f"{metrics['ground_truth'][method]['auc']:.3f}"
    for j, row in enumerate(metrics["comparison"]["rows"]):
        assert page.cells[f"metrics.comparison.rows.{j}.cpr"][0] == f"{row['cpr']:.3f}"
    for method, m in metrics.get("edge_ground_truth", {}).items():
        assert page.cells[f"metrics.edge_ground_truth.{method}.auc"][0] == f"{m['auc']:.3f}"
    fig = F.faithfulness_curves(load_run(out))
    labelled = [ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert len(labelled) == len(metrics["faithfulness"]["curves"])


def test_rank_change_scores_are_shaded_as_scores(toy_run):
    """With node_score rank-change no raw value is monotone in the score: the pictures shade the score."""
    run = load_run(toy_run)
    ms = run.methods["sae-codes"]
    assert "paired_feature_change" in ms.extras  # the preset scores by rank-change
    values, label = ms.display_values()
    np.testing.assert_allclose(values, ms.scores)
    assert "paired feature change" in label
    del ms.extras["paired_feature_change"]  # a softmax-scored run: shaded by its raw distance, as before
    assert ms.display_values()[1].startswith("code distance")
