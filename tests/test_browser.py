"""Open report.html in headless Chromium: every image loads, no console errors, the tables
show the run's numbers; a full-page screenshot is saved to test-artifacts/.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (scripts/install_browser.sh,
which scripts/setup.sh runs) and selenium (the ``dev`` extra). Where they are missing the
tests skip, saying why, except under CI (``CI`` set to true), where they fail.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from circuitscan.rundir import read_run_json, write_json

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1300,1000")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"{reason}; CI must run the browser test (scripts/install_browser.sh installs Chromium)")
    pytest.skip(f"{reason} (run scripts/install_browser.sh as root to enable this test)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium driven through chromedriver, with a fresh profile."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _unavailable(f"no headless browser here (chromium: {binary or 'missing'}, chromedriver: "
                     f"{driver_path or 'missing'})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # both paths given: selenium needs no network to find a driver
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    """A real toy discover run (``discover --save-activations``), then the keys that ``evaluate``
    and ``compare`` add, written with stated numbers, and its report."""
    from circuitscan.cli import main
    from circuitscan.report import write_report

    out = tmp_path_factory.mktemp("browser") / "run"
    with _one_torch_thread(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        code = main(["discover", "--model", "toy-planted", "--task", "planted", "-n", "30", "--out", str(out),
                     "--save-activations"])
    assert code == 0, err.getvalue()
    metrics = read_run_json(out, "metrics.json")
    methods = list(metrics["ground_truth"])
    metrics["faithfulness"] = {
        "ablation": "mean", "metric": "logit_diff",
        "curves": {m: {"sizes": [1, 2, 3, 6, 12], "fractions": [1 / 12, 2 / 12, 3 / 12, 0.5, 1.0],
                       "values": [0.3, 0.6, 0.95, 0.97, 1.0], "random_mean": [0.05, 0.1, 0.2, 0.5, 1.0],
                       "random_std": [0.02, 0.04, 0.05, 0.1, 0.0]} for m in methods},
        "cpr": {m: 0.875 for m in methods}, "cmd": {m: 0.0625 for m in methods},
    }
    metrics["circuit_performance"] = {"ablation": "mean", "metrics": ["logit_diff"], "rows": [
        {"name": "clean model", "n_heads": 12, "metrics": {"logit_diff": 2.5}, "normalised": {"logit_diff": 1.0}},
        {"name": "random circuits", "n_heads": 3, "metrics": {"logit_diff": -1.75}, "normalised": {"logit_diff": 0.125},
         "std": {"logit_diff": 0.5}}]}
    metrics["comparison"] = {"rows": [
        {"method": m, "node_auc": metrics["ground_truth"][m]["auc"], "edge_auc": None, "head_auc_from_pairs": None,
         "cpr": 0.875, "cmd": 0.0625, "best_f1_size": 3, "wall_time_s": 4.5, "forward_passes": 1,
         "backward_passes": 0, "roc_source": "heads"} for m in methods]}
    write_json(out / "metrics.json", metrics)
    write_report(out)
    return out


def _load(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, "page did not finish loading"
        time.sleep(0.1)


def _images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 40), complete: i.complete, "
        "w: i.naturalWidth, h: i.naturalHeight, figure: i.dataset.figure || ''}));")


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _cells(driver) -> dict[str, tuple[str, str]]:
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('td[data-key]')).map(td => "
        "[td.dataset.key, td.innerText.trim(), td.dataset.value]);")
    return {k: (text, value) for k, text, value in rows}


def _screenshot(driver, name: str) -> Path:
    """A full-page PNG through the DevTools protocol (beyond the viewport)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.mark.slow  # a headless Chromium
def test_report_in_a_real_browser(browser, report_run):
    _load(browser, report_run / "report.html")

    images = _images(browser)
    figures = sorted(p.stem for p in (report_run / "figures").glob("*.png"))
    assert sorted(i["figure"] for i in images) == figures
    assert {"faithfulness", "roc", "pairs-sae-codes-pairs", "features-pca", "heatmap-sae-codes"} <= set(figures)
    broken = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"images that did not load: {broken}"

    errors = _errors(browser)
    assert not errors, f"console errors: {errors}"

    metrics = read_run_json(report_run, "metrics.json")
    cells = _cells(browser)
    for method, m in metrics["ground_truth"].items():
        assert cells[f"metrics.ground_truth.{method}.auc"][0] == f"{m['auc']:.3f}"
        assert cells[f"metrics.ground_truth.{method}.best_f1"][0] == f"{m['best_f1']:.3f}"
        assert cells[f"metrics.circuits.{method}.size"][0] == str(metrics["circuits"][method]["size"])
        assert cells[f"metrics.faithfulness.cpr.{method}"][0] == "0.875"
    for j, row in enumerate(metrics["comparison"]["rows"]):
        assert cells[f"metrics.comparison.rows.{j}.node_auc"][0] == f"{row['node_auc']:.3f}"
        assert cells[f"metrics.comparison.rows.{j}.wall_time_s"][0] == "4.500"
    assert cells["metrics.circuit_performance.rows.1.metrics.logit_diff"][0] == "-1.750 ± 0.500"
    for stage, seconds in metrics["timings_s"].items():
        text, value = cells[f"metrics.timings_s.{stage}"]
        assert float(value) == seconds and abs(float(text) - seconds) <= 5e-4 + 1e-3 * abs(seconds)

    # every section the run has is on the page and laid out (not collapsed to nothing)
    heights = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('section')).map(s => [s.id, s.offsetHeight]));")
    for section in ("summary", "scores", "roc", "circuit", "pairs", "faithfulness", "comparison", "features",
                    "config", "timings"):
        assert heights.get(section, 0) > 40, (section, heights)
    # figures are drawn at a readable size: wider than 300 CSS pixels, none wider than the page
    page_w = browser.execute_script("return document.documentElement.clientWidth")
    widths = browser.execute_script("return Array.from(document.images).map(i => i.getBoundingClientRect().width)")
    assert all(300 <= w <= page_w for w in widths), widths

    shot = _screenshot(browser, "report-screenshot.png")
    assert shot.stat().st_size > 50_000


def test_the_browser_checks_catch_a_broken_page(browser, tmp_path):
    """The checks above can fail: a missing image and a console error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="missing.png" data-figure="missing"><script>console.error("boom")</script>'
                    "</body></html>")
    _load(browser, page)
    images = _images(browser)
    assert len(images) == 1 and images[0]["w"] == 0
    messages = " ".join(e["message"] for e in _errors(browser))
    assert "boom" in messages
