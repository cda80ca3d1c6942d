"""The paper's robustness studies as named sweeps (``circuitscan sweep --sweep NAME``).

Each is a grid (which ``--grid`` may extend or override axis by axis), the paper figure
it reproduces, and the figure the sweep report draws for it. Every sweep also records,
for every point, F1 at a log grid of thresholds theta, so ``threshold`` (Fig. 4) needs no
axis of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CircuitscanError
from ..tasks import canonical
from .grid import Grid, parse_grid


@dataclass(frozen=True)
class NamedSweep:
    name: str
    grid: tuple[str, ...]
    paper: str
    description: str
    figure: str  # heatmap | line | bars | theta
    level: str | None = None  # forces a scoring level when set
    task: str | None = None  # the task it is meant for, when it needs one

    def parse(self, task: str | None) -> Grid:
        return parse_grid(list(self.grid), task=task)


NAMED_SWEEPS: dict[str, NamedSweep] = {
    s.name: s
    for s in (
        NamedSweep("features-l1", ("features=50,100,200,400,800", "l1=0.005,0.01,0.02,0.05,0.1"), "Fig. 3",
                   "node AUC over SAE size x sparsity weight lambda", "heatmap"),
        NamedSweep("threshold", (), "Fig. 4", "F1 against the threshold theta on softmaxed scores (log scale)",
                   "theta"),
        NamedSweep("edge-k", ("edge_k_frac=0.05,0.1,0.25,0.5,0.75,1",), "Fig. 35",
                   "head AUC from pairs against the fraction of head pairs kept (k)", "line", level="both"),
        NamedSweep("train-examples", ("train_examples=5,10,25,50,100,250",), "Fig. 24",
                   "node AUC against the number of examples the SAE trains on", "line"),
        NamedSweep("examples", ("examples=10,25,50,100,250",), "Fig. 23",
                   "node AUC against the number of prompts per side codes are counted on (SAE on 10)", "line"),
        NamedSweep("softmax", ("softmax=global,layer",), "Fig. 21", "softmax over all heads vs within each layer",
                   "bars"),
        NamedSweep("normalise", ("normalise=false,true",), "Fig. 22",
                   "unique positive codes, raw vs divided by all codes at the head", "bars"),
        NamedSweep("negatives", ("negative=range,year,random,unrelated,copy",), "Fig. 19",
                   "greater-than's negative-example types", "bars", task="greater-than"),
        NamedSweep("easy-negatives", ("easy_negatives=0,50,100,250,500",), "Fig. 20",
                   "unrelated text added as extra negatives", "line"),
        NamedSweep("contrastive", ("contrastive=0,0.1,0.3,1,3",), "Appendix J, Fig. 32",
                   "contrastive-loss weight alpha (a documented negative result)", "line"),
    )
}


def get_named(name: str) -> NamedSweep:
    if name not in NAMED_SWEEPS:
        raise CircuitscanError(f"unknown named sweep {name!r}; known: {', '.join(NAMED_SWEEPS)}")
    return NAMED_SWEEPS[name]


def check_task(sweep: NamedSweep, task: str) -> None:
    """A sweep over a task's own option needs that task."""
    if sweep.task is not None and canonical(task.partition(":")[0]) != sweep.task:
        raise CircuitscanError(
            f"named sweep {sweep.name!r} varies an option of task {sweep.task!r} ({', '.join(sweep.grid)}); "
            f"it cannot run on task {task!r}"
        )
