"""The HTML report: one self-contained file (PNG figures embedded as data URIs, no scripts,
no network), with the run's tables. SVG versions sit beside it in ``figures/``.

Every number in a table is a ``<td class="num">`` whose ``data-key`` names where it came
from (``metrics.ground_truth.sae-codes.auc``) and whose ``data-value`` holds the value
as written in the run directory, so that tests (and readers) can check the page
against the files.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Sequence

from .._version import __version__
from .figures import FigureFile
from .html_cells import _e, cell, fmt, num_cell, table
from .html_tables import (
    COMPARISON_COLUMNS,
    COMPARISON_LABELS,
    circuit_performance_table,
    circuits_table,
    comparison_table,
    config_table,
    cost_table,
    edge_ground_truth_table,
    faithfulness_table,
    ground_truth_table,
    sae_table,
    summary_cards,
    timings_table,
    top_heads_table,
)
from .rundata import RunData

SECTIONS = (
    ("summary", "Summary"),
    ("scores", "Per-head scores"),
    ("roc", "ROC over heads"),
    ("circuit", "Circuits"),
    ("pairs", "Head pairs"),
    ("faithfulness", "Faithfulness and circuit performance"),
    ("comparison", "Method comparison"),
    ("features", "SAE features"),
    ("sae", "SAE training"),
    ("config", "Configuration"),
    ("timings", "Timings"),
)

CSS = """
:root { --fg:#1d232a; --muted:#5a6570; --line:#d9dee3; --accent:#08519c; --bg:#ffffff; --zebra:#f5f7f9; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; }
header { background: #0b2f55; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d6e3; font-size: 13px; }
nav { position: sticky; top: 0; background: #f0f3f6; border-bottom: 1px solid var(--line);
      padding: 6px 28px; font-size: 13px; z-index: 2; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; white-space: nowrap; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 28px 48px; }
section { margin-top: 28px; scroll-margin-top: 40px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #e9eef3; font-weight: 600; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.heads { max-width: 720px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
tr.total td { font-weight: 600; }
.gt { color: #c00; font-weight: 600; }
figure { margin: 14px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
figcaption a { color: var(--accent); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 170px; }
.card .k { color: var(--muted); font-size: 12px; }
.card .v { font-size: 20px; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _figure(f: FigureFile) -> str:
    data = base64.b64encode(f.png.read_bytes()).decode("ascii")
    rel = f"figures/{f.png.name}"
    rel_svg = f"figures/{f.svg.name}"
    return (
        f'<figure id="fig-{_e(f.name)}"><img src="data:image/png;base64,{data}" alt="{_e(f.title)}" '
        f'data-figure="{_e(f.name)}">'
        f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)} "
        f'Files: <a href="{_e(rel)}">PNG</a> · <a href="{_e(rel_svg)}">SVG</a></figcaption></figure>'
    )


# ---------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------
def render(run: RunData, figures: Sequence[FigureFile]) -> str:
    by_section: dict[str, list[FigureFile]] = {}
    for f in figures:
        by_section.setdefault(f.section, []).append(f)
    blocks: dict[str, str] = {}

    notes = run.metrics.get("notes") or {}
    note_html = "".join(f'<p class="note"><b>{_e(k)}</b>: {_e(v)}</p>' for k, v in notes.items())
    blocks["summary"] = summary_cards(run) + ground_truth_table(run) + edge_ground_truth_table(run) + note_html
    blocks["scores"] = "".join(_figure(f) for f in by_section.get("scores", [])) + top_heads_table(run)
    blocks["roc"] = "".join(_figure(f) for f in by_section.get("roc", []))
    blocks["circuit"] = circuits_table(run) + "".join(_figure(f) for f in by_section.get("circuit", []))
    blocks["pairs"] = "".join(_figure(f) for f in by_section.get("pairs", []))
    blocks["faithfulness"] = ("".join(_figure(f) for f in by_section.get("faithfulness", []))
                              + faithfulness_table(run) + circuit_performance_table(run))
    blocks["comparison"] = comparison_table(run)
    blocks["features"] = "".join(_figure(f) for f in by_section.get("features", []))
    blocks["sae"] = sae_table(run) + "".join(_figure(f) for f in by_section.get("sae", []))
    if blocks["sae"] and run.features is None:
        blocks["sae"] += ('<p class="note">Figures of the SAE features (PCA, t-SNE, histograms of the top codes) '
                          "need the run's activations: run <code>circuitscan discover --save-activations</code>.</p>")
    blocks["config"] = config_table(run)
    blocks["timings"] = timings_table(run) + cost_table(run)

    present = [(sid, title) for sid, title in SECTIONS if blocks.get(sid)]
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in present)
    body = "\n".join(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{blocks[sid]}</section>' for sid, title in present)
    cfg = run.config
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sub = (f"{cfg.get('command', 'run')} · circuitscan {cfg.get('circuitscan_version', '?')} · "
           f"{run.path.resolve().name}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'">
<link rel="icon" href="data:,">
<title>circuitscan report: {_e(run.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>circuitscan report: {_e(run.title)}</h1><p>{_e(sub)}</p></header>
<nav>{nav}</nav>
<main>
{body}
<footer>Written by circuitscan {_e(__version__)} on {_e(when)} from the files of this run directory.
Every AUC here is over heads unless it says edges; <code>sae-codes-pairs</code> is the paper's
"edge-level" result, a score per head from top head pairs.</footer>
</main>
</body>
</html>
"""


__all__ = ["COMPARISON_COLUMNS", "COMPARISON_LABELS", "CSS", "SECTIONS", "cell", "circuit_performance_table",
           "circuits_table", "comparison_table", "config_table", "cost_table", "edge_ground_truth_table",
           "faithfulness_table", "fmt", "ground_truth_table", "num_cell", "render", "sae_table", "summary_cards",
           "table", "timings_table", "top_heads_table"]
