"""Replay the reliability probe: bad input, data-safety and race cases against the CLI.

Each case runs ``circuitscan`` in-process in a fresh temporary directory and checks the
exit status, a phrase of the message and what is on disk afterwards. Prints one line per
case and the totals (docs/RELIABILITY.md quotes them)::

    PYTHONPATH=src .venv/bin/python scripts/probe_reliability.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import circuitscan.rundir
from circuitscan.cli import main

# the probe asks for --overwrite of "/", "~" and "."; against a circuitscan without the
# protections it tests that would delete them, so it refuses to run there
if not hasattr(circuitscan.rundir, "check_replaceable"):
    sys.exit("this circuitscan lacks the --overwrite protections; the probe would delete real directories")

RUN = ["--model", "toy-planted", "--task", "planted", "-n", "20", "--epochs", "20"]
D = ["discover", *RUN]
S = ["sweep", *RUN, "--workers", "1", "--threads-per-worker", "1", "--no-figures"]


def run_dir(tmp: Path) -> Path:
    out = tmp / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*D, "--out", str(out)]) == 0
    return out


def user_dir(tmp: Path) -> Path:
    d = tmp / "mine"
    d.mkdir()
    (d / "important.txt").write_text("keep")
    return d


def jsonl(tmp: Path, rows: list) -> str:
    path = tmp / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gt(tmp: Path, text: bytes, name: str = "gt.json") -> str:
    (tmp / name).write_bytes(text)
    return str(tmp / name)


ROW = {"positive": [0, 1, 2, 3], "negative": [0, 1, 2, 4]}

# (name, setup(tmp) -> argv, expected exit status, phrase in stderr, check(tmp) -> bool)
Case = tuple[str, Callable[[Path], list[str]], int, str, Callable[[Path], bool] | None]
CASES: list[Case] = [
    ("overwrite .", lambda t: (os.chdir(user_dir(t)), [*D, "--overwrite", "--out", "."])[1], 2,
     "current directory", lambda t: (t / "mine" / "important.txt").is_file()),
    ("sweep overwrite .", lambda t: (os.chdir(user_dir(t)), [*S, "--overwrite", "--out", "."])[1], 2,
     "current directory", lambda t: (t / "mine" / "important.txt").is_file()),
    ("overwrite a user directory", lambda t: [*D, "--overwrite", "--out", str(user_dir(t))], 2,
     "not written by circuitscan", lambda t: (t / "mine" / "important.txt").is_file()),
    ("sweep overwrite a user directory", lambda t: [*S, "--overwrite", "--out", str(user_dir(t))], 2,
     "not written by circuitscan", lambda t: (t / "mine" / "important.txt").is_file()),
    ("overwrite a symlink", lambda t: ((t / "l").symlink_to(user_dir(t)), [*D, "--overwrite", "--out", str(t / "l")])[1],
     2, "symbolic link", lambda t: (t / "mine" / "important.txt").is_file()),
    ("overwrite /", lambda t: [*D, "--overwrite", "--out", "/"], 2, "root", None),
    ("overwrite home", lambda t: [*D, "--overwrite", "--out", str(Path.home())], 2, "home directory", None),
    ("overwrite a run", lambda t: [*D, "--overwrite", "--out", str(run_dir(t))], 0, "", lambda t: (t / "run").is_dir()),
    ("device banana", lambda t: [*D, "--device", "banana", "--out", str(t / "o")], 2, "unknown device",
     lambda t: not (t / "o").exists()),
    ("device cuda without a GPU", lambda t: [*D, "--device", "cuda", "--out", str(t / "o")], 2, "no CUDA GPU",
     lambda t: not (t / "o").exists()),
    ("--task and --task-file", lambda t: [*D, "--task-file", jsonl(t, [ROW]), "--out", str(t / "o")], 2, "not both",
     None),
    ("identical positives and negatives", lambda t: ["discover", "--model", "toy-planted", "--task-file",
     jsonl(t, [{"positive": [0, 1, 2, 3], "negative": [0, 1, 2, 3]}] * 12), "--epochs", "20",
     "--out", str(t / "o")], 0, "do not differ", None),
    ("bad token id beyond -n", lambda t: ["discover", "--model", "toy-planted", "-n", "2", "--task-file",
     jsonl(t, [ROW] * 4 + [{"positive": [0, 1, 2, 99999], "negative": [0, 1, 2, 4]}]), "--out", str(t / "o")], 2,
     "outside the vocabulary", lambda t: not (t / "o").exists()),
    ("ground truth [1,2]", lambda t: [*D, "--ground-truth", gt(t, b"[1,2]"), "--out", str(t / "o")], 2,
     "is not a head", None),
    ("ground truth [[0,1],[1]]", lambda t: [*D, "--ground-truth", gt(t, b"[[0,1],[1]]"), "--out", str(t / "o")], 2,
     "entry 1", None),
    ("ground truth a directory x.json", lambda t: ((t / "x.json").mkdir(), [*D, "--ground-truth", str(t / "x.json"),
     "--out", str(t / "o")])[1], 2, "is a directory", None),
    ("ground truth not UTF-8", lambda t: [*D, "--ground-truth", gt(t, b"\xff\xfe[\x00"), "--out", str(t / "o")], 2,
     "not UTF-8", None),
    ("ground truth unknown name", lambda t: [*D, "--ground-truth", "nosuchgt", "--out", str(t / "o")], 2,
     "ioi/acdc", None),
    ("--lr 1e38", lambda t: [*D, "--lr", "1e38", "--out", str(t / "o")], 2, "", lambda t: not (t / "o").exists()),
    ("--seed beyond 64 bits", lambda t: [*D, "--seed", str(2**70), "--out", str(t / "o")], 2, "seed", None),
    ("--features 100000000", lambda t: [*D, "--features", "100000000", "--out", str(t / "o")], 2, "GiB of memory",
     lambda t: list(t.iterdir()) == []),
    ("-n 1000000000", lambda t: [*D[:5], "-n", "1000000000", "--out", str(t / "o")], 2, "GiB of memory",
     lambda t: list(t.iterdir()) == []),
    ("config.json is []", lambda t: ((run_dir(t) / "config.json").write_text("[]"), ["evaluate", str(t / "run")])[1],
     2, "JSON object", None),
    ("truncated codes.safetensors", lambda t: (_truncate(run_dir(t) / "codes.safetensors"),
     ["report", str(t / "run")])[1], 2, "truncated or corrupt", None),
    ("evaluate after the task file changed", lambda t: _changed_task(t), 2, "has changed since the run", None),
    ("evaluate while another evaluate holds the run", lambda t: _held(t, "evaluate"), 2, "another circuitscan process",
     None),
    ("report while another command holds the run", lambda t: _held(t, "report"), 2, "another circuitscan process",
     None),
    ("discover to an --out another discover is writing", lambda t: _writing(t), 2, "is writing", None),
]

_HELD: list = []


def _held(t: Path, command: str) -> list[str]:
    from circuitscan.rundir import lock_run

    out = run_dir(t)
    lock = lock_run(out)
    lock.__enter__()
    _HELD.append(lock)
    return [command, str(out), *(["--random-samples", "2"] if command == "evaluate" else [])]


def _writing(t: Path) -> list[str]:
    from circuitscan.rundir import RunWriter

    _HELD.append(RunWriter(t / "new"))
    return [*D, "--out", str(t / "new")]


def _release() -> None:
    while _HELD:
        h = _HELD.pop()
        if hasattr(h, "abort"):
            h.abort()
        else:
            h.__exit__(None, None, None)


API: list[tuple[str, Callable[[dict], object], str]] = [  # (what is tried, the call, what the error names)
    ("cs.discover(model, 'ioi')", lambda e: e["cs"].discover(e["model"], "ioi"), "prompts must be a PromptSet"),
    ("cs.load_model(123)", lambda e: e["cs"].load_model(123), "spec must be"),
    ("cs.build_task(model='toy-planted')", lambda e: e["cs"].build_task(model="toy-planted"), "name must be"),
    ("cs.build_task('planted', 'toy-planted', 4)", lambda e: e["cs"].build_task("planted", "toy-planted", 4),
     "model must be a ModelHandle"),
    ("cs.discover(model, prompts with float tokens)", lambda e: e["cs"].discover(
        e["model"], replace(e["prompts"], positive=e["prompts"].positive.float())), "integer tensor"),
    ("cs.SAEConfig(epochs=2.5)", lambda e: e["cs"].SAEConfig(epochs=2.5), "epochs must be a whole number"),
    ("cs.SAEConfig(n_features=True)", lambda e: e["cs"].SAEConfig(n_features=True),
     "n_features must be a whole number"),
    ("cs.ScoringConfig(edge_k=1.5)", lambda e: e["cs"].ScoringConfig(edge_k=1.5), "edge_k must be"),
    ("cs.discover(model, prompts, sae='big')", lambda e: e["cs"].discover(e["model"], e["prompts"], sae="big"),
     "sae must be an SAEConfig"),
    ("cs.discover(model, prompts of toy-random)", lambda e: e["cs"].discover(e["model"], e["other"]),
     "built for a model of family 'toy-random'"),
    ("cs.load_model('toy-planted', device='banana')", lambda e: e["cs"].load_model("toy-planted", device="banana"),
     "unknown device"),
]


def replay_api() -> tuple[int, int]:
    import circuitscan as cs
    from circuitscan.errors import CircuitscanError

    model = cs.load_model("toy-planted")
    prompts = cs.build_task("planted", model, 10)
    other_model = cs.load_model("toy-random")
    other = replace(prompts, metadata={**prompts.metadata, "built_for": other_model.family})
    env = {"cs": cs, "model": model, "prompts": prompts, "other": other}
    passed = 0
    for expr, call, phrase in API:
        try:
            call(env)
            ok, said = False, "no error"
        except CircuitscanError as exc:
            ok, said = phrase in str(exc), str(exc)
        except Exception as exc:  # noqa: BLE001 - what the probe looks for
            ok, said = False, f"{type(exc).__name__}: {exc}"
        passed += ok
        print(f"{'ok  ' if ok else 'FAIL'} {expr:<70} {said[:80]}")
    return passed, len(API)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _changed_task(t: Path) -> list[str]:
    rows = [{"positive": [0, 1, 2, 3], "negative": [0, 1, 2, 4], "answer": 1}] * 12
    path = jsonl(t, rows)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["discover", "--model", "toy-planted", "--task-file", path, "--epochs", "20",
                     "--out", str(t / "run")]) == 0
    jsonl(t, [{"positive": [0, 1, 3, 3], "negative": [0, 1, 2, 4], "answer": 1}] * 12)  # same shape, other prompts
    return ["evaluate", str(t / "run"), "--random-samples", "2"]


def replay() -> tuple[int, int]:
    passed = 0
    home = os.getcwd()
    for name, setup, want_rc, phrase, check in CASES:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            err = io.StringIO()
            try:
                argv = setup(tmp)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                    try:
                        rc = main(argv)
                    except SystemExit as exc:  # argparse
                        rc = exc.code
                text = err.getvalue()
                ok = rc == want_rc and phrase in text and "unexpected error" not in text and (check is None or check(tmp))
            finally:
                os.chdir(home)
                _release()
        passed += ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<40} exit {rc}  {text.strip().splitlines()[-1][:110] if text.strip() else ''}")
    return passed, len(CASES)


if __name__ == "__main__":
    p, n = replay()
    q, m = replay_api()
    print(f"CLI: {p} of {n} cases passed; Python API: {q} of {m} cases passed")
    sys.exit(0 if (p, q) == (n, m) else 1)
