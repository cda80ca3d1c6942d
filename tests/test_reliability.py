"""Honest refusals: the task a run used, memory bounds, misleading successes, exit 2 with a
message, orphan workers, deterministic files and SIGTERM (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuitscan.cli import main
from circuitscan.rundir import read_json

SRC = str(Path(__file__).resolve().parents[1] / "src")
D = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "20", "--epochs", "20"]
ROW = {"positive": [0, 1, 2, 3], "negative": [0, 1, 2, 4], "answer": 1, "wrong_answer": 2}


def _fails(argv, capsys, match):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err, err
    assert "Traceback" not in err and "unexpected error" not in err
    return err


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- 2. the task a run used

def test_evaluate_refuses_a_task_file_changed_since_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "task.jsonl", [ROW] * 12)
    assert main(["discover", "--model", "toy-planted", "--task-file", "task.jsonl", "--epochs", "20",
                 "--out", "run"]) == 0
    task = read_json(tmp_path / "run" / "config.json")["task"]
    assert task["file"] == str(tmp_path / "task.jsonl")  # stored absolute
    assert len(task["file_sha256"]) == 64 and len(task["prompts_sha256"]) == 64
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    # from another directory the relative name would mean another file: the absolute path is used
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["evaluate", "../run", "--random-samples", "2"]) == 0
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    # same shape (count, length, name), other prompts: refused, metrics.json untouched
    _jsonl(tmp_path / "task.jsonl", [{**ROW, "positive": [0, 1, 3, 3]}] * 12)
    _fails(["evaluate", "../run", "--random-samples", "2"], capsys, "has changed since the run was made")
    assert (tmp_path / "run" / "metrics.json").read_text() == metrics


def test_evaluate_refuses_rebuilt_prompts_that_differ(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*D, "--out", str(out)]) == 0
    cfg = read_json(out / "config.json")
    cfg["task"]["prompts_sha256"] = "0" * 64  # as if the generator had changed
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    _fails(["evaluate", str(out), "--random-samples", "2"], capsys, "differ from the run's")


# --------------------------------------------------------------------------- 3. upper bounds

@pytest.mark.parametrize("extra", [["--features", "100000000"], ["-n", "1000000000"]])
def test_memory_is_estimated_before_allocating(tmp_path, capsys, extra):
    err = _fails([*D, *extra, "--out", str(tmp_path / "o")], capsys, "GiB of memory, more than the")
    assert "use fewer" in err
    assert list(tmp_path.iterdir()) == []  # no run, no .partial-* directory


def test_the_memory_limit_can_be_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITSCAN_MAX_MEMORY_GB", "0.00001")
    _fails([*D, "--out", str(tmp_path / "o")], capsys, "more than the 1e-05 GiB available")
    monkeypatch.setenv("CIRCUITSCAN_MAX_MEMORY_GB", "lots")
    _fails([*D, "--out", str(tmp_path / "o")], capsys, "must be a number of GiB")


# --------------------------------------------------------------------------- 5. misleading success

@pytest.mark.parametrize(("device", "match"), [("banana", "unknown device 'banana'"), ("cuda", "no CUDA GPU"),
                                               ("tpu", "unknown device")])
def test_a_device_this_machine_lacks_is_refused(tmp_path, capsys, device, match):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _fails([*D, "--device", device, "--out", str(tmp_path / "o")], capsys, match)
    assert not (tmp_path / "o").exists()


def test_identical_positives_and_negatives_warn_and_give_no_circuit(tmp_path, capsys):
    path = _jsonl(tmp_path / "same.jsonl", [{"positive": [0, 1, 2, 3], "negative": [0, 1, 2, 3]}] * 12)
    out = tmp_path / "run"
    assert main(["discover", "--model", "toy-planted", "--task-file", str(path), "--epochs", "20",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "positives and negatives do not differ" in err
    circuits = read_json(out / "metrics.json")["circuits"]
    assert circuits["sae-codes"]["size"] == 0  # ties at the uniform level are not "above" it


def test_every_row_of_a_task_file_is_checked_not_only_the_first_n(tmp_path, capsys):
    rows = [ROW] * 4 + [{**ROW, "positive": [0, 1, 2, 99999]}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    _fails(["discover", "--model", "toy-planted", "-n", "2", "--task-file", str(path), "--out",
            str(tmp_path / "o")], capsys, "t.jsonl:5: field 'positive': token id 99999 is outside the vocabulary")
    _jsonl(path, [ROW] * 4 + [{**ROW, "answer": 4096}])
    _fails(["discover", "--model", "toy-planted", "-n", "2", "--task-file", str(path), "--out",
            str(tmp_path / "o")], capsys, "t.jsonl:5: field 'answer'")
    assert not (tmp_path / "o").exists()


def test_task_and_task_file_together_are_an_error(tmp_path, capsys):
    path = _jsonl(tmp_path / "t.jsonl", [ROW] * 4)
    _fails([*D, "--task-file", str(path), "--out", str(tmp_path / "o")], capsys, "not both")


# --------------------------------------------------------------------------- 6. exit 2, not exit 1

@pytest.mark.parametrize(("content", "match"), [
    (b"[1,2]", "entry 0 (1) is not a head"),
    (b"[[0,1],[1]]", "entry 1 ([1]) is not a head"),
    (b'{"heads": [[0, true]]}', "entry 0"),
    (b"\xff\xfe[\x00", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b'{"heads": 3}', "must hold a list of heads"),
])
def test_bad_ground_truth_files_exit_2(tmp_path, capsys, content, match):
    gt = tmp_path / "gt.json"
    gt.write_bytes(content)
    _fails([*D, "--ground-truth", str(gt), "--out", str(tmp_path / "o")], capsys, match)
    assert not (tmp_path / "o").exists()


def test_ground_truth_directory_and_unknown_name(tmp_path, capsys):
    (tmp_path / "x.json").mkdir()
    _fails([*D, "--ground-truth", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")], capsys, "is a directory")
    err = _fails([*D, "--ground-truth", "nosuchgt", "--out", str(tmp_path / "o")], capsys, "unknown ground truth")
    assert "ioi/acdc" in err and "planted" in err  # the registry names


@pytest.mark.parametrize(("extra", "match"), [(["--lr", "1e38"], "at most 1e10"),
                                              (["--seed", str(2**70)], "expected a seed in 0..")])
def test_out_of_range_numbers_exit_2(tmp_path, capsys, extra, match):
    _fails([*D, *extra, "--out", str(tmp_path / "o")], capsys, match)


def test_a_prompt_longer_than_the_context_exits_2(planted, tmp_path, capsys):
    n_ctx = planted.bridge.cfg.n_ctx
    path = _jsonl(tmp_path / "long.jsonl", [{"positive": [1] * (n_ctx + 5), "negative": [2] * (n_ctx + 5)}] * 12)
    _fails(["discover", "--model", "toy-planted", "--task-file", str(path), "--epochs", "5", "--out",
            str(tmp_path / "o")], capsys, f"reads at most {n_ctx}")


def test_broken_run_files_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*D, "--out", str(out)]) == 0
    codes = (out / "codes.safetensors").read_bytes()
    (out / "codes.safetensors").write_bytes(codes[: len(codes) // 2])
    _fails(["report", str(out)], capsys, "truncated or corrupt")
    (out / "config.json").write_text("[]")
    _fails(["evaluate", str(out)], capsys, "must hold a JSON object")


def test_a_full_disk_is_named(tmp_path, monkeypatch, capsys):
    import errno

    import circuitscan.rundir as rundir

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rundir, "write_json", full)
    _fails([*D, "--out", str(tmp_path / "o")], capsys, "no space left on the device")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 4. orphans

@pytest.mark.slow  # a process tree killed by a signal
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    script = f"""
import sys, threading, time
sys.path.insert(0, {SRC!r})
from circuitscan.sweep.backends import LocalPoolBackend
b = LocalPoolBackend({{}}, workers=2, threads=1, fn=time.sleep)
threading.Thread(target=lambda: list(b.run([120, 120])), daemon=True).start()
while len(getattr(b._pool, "_processes", None) or {{}}) < 2:
    time.sleep(0.05)
time.sleep(1.0)
print(" ".join(str(p) for p in b._pool._processes), flush=True)
time.sleep(120)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        from circuitscan.sweep.worker import process_alive

        assert all(process_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(process_alive(p) for p in pids), "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# --------------------------------------------------------------------------- 9. files and signals

def test_same_seed_runs_give_the_same_files_but_wall_times(tmp_path, capsys):
    from circuitscan.rundir import read_run_json

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main([*D, "--save-activations", "--out", str(out)]) == 0
    for name in ("codes.safetensors", "sae.safetensors", "activations.safetensors", "circuitscan.json",
                 "scores.json", "metrics.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ca, cb = read_json(a / "config.json"), read_json(b / "config.json")
    ca["argv"].pop("out"), cb["argv"].pop("out")
    assert ca == cb
    # the wall times are all in timings.json, and read back into the files they belong to
    timings = read_json(a / "timings.json")
    assert set(timings) == {"scores.json", "metrics.json"}
    assert "wall_time_s" not in (a / "scores.json").read_text() and "timings_s" not in (a / "metrics.json").read_text()
    scores, metrics = read_run_json(a, "scores.json"), read_run_json(a, "metrics.json")
    assert all(entry["wall_time_s"] >= 0 for entry in scores["methods"].values())
    assert metrics["timings_s"]["sae_train"] >= 0 and metrics["sae"]["seconds"] >= 0
    capsys.readouterr()


def test_run_files_without_timings_json_read_as_written(tmp_path):
    from circuitscan.rundir import read_run_json, split_wall_clock, write_run_json

    data = {"methods": {"m": {"wall_time_s": 1.5, "auc": 0.9}}, "sae": {"seconds": 2.0, "l0": 3}}
    kept, timed = split_wall_clock(data)
    assert kept == {"methods": {"m": {"auc": 0.9}}, "sae": {"l0": 3}}
    assert timed == {"methods": {"m": {"wall_time_s": 1.5}}, "sae": {"seconds": 2.0}}
    old = tmp_path / "old"  # a run from before timings.json: the times are inline and stay there
    old.mkdir()
    (old / "scores.json").write_text(json.dumps(data))
    assert read_run_json(old, "scores.json") == data
    new = tmp_path / "new"
    new.mkdir()
    write_run_json(new, "scores.json", data)
    write_run_json(new, "metrics.json", {"timings_s": {"x": 1.0}, "auc": 1})
    assert read_run_json(new, "scores.json") == data
    assert read_run_json(new, "metrics.json") == {"timings_s": {"x": 1.0}, "auc": 1}
    assert json.loads((new / "metrics.json").read_text()) == {"auc": 1}
    (new / "timings.json").write_text("{truncated")  # a damaged timings.json loses only the times
    assert read_run_json(new, "scores.json") == kept


@pytest.mark.slow  # a child process stopped by SIGTERM
def test_sigterm_cleans_up_like_sigint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "circuitscan.cli", *D[:5], "-n", "40", "--epochs", "100000", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp_path.glob(".run.partial-*")), "the run never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted; nothing was written" in err
    assert list(tmp_path.iterdir()) == []  # neither the run nor its partial directory
