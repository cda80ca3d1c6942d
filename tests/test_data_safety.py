"""--overwrite replaces only what circuitscan wrote; runs follow the umask; locks stop clashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.rundir import MARKER, RunWriter, is_circuitscan_dir, lock_run

DISCOVER = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "20", "--epochs", "20"]
SWEEP = ["sweep", "--model", "toy-planted", "--task", "planted", "-n", "20", "--epochs", "20",
         "--workers", "1", "--threads-per-worker", "1"]


def _fails(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err, err
    assert "Traceback" not in err and "unexpected error" not in err


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _user_dir(path):
    path.mkdir(parents=True)
    (path / "important.txt").write_text("keep")
    (path / "sub").mkdir()
    (path / "sub" / "notes.md").write_text("mine")
    return _tree(path)


@pytest.mark.parametrize("command", [DISCOVER, SWEEP])
def test_overwrite_never_deletes_the_current_directory(tmp_path, monkeypatch, capsys, command):
    work = tmp_path / "w"
    before = _user_dir(work)
    monkeypatch.chdir(work)
    _fails([*command, "--overwrite", "--out", "."], capsys, "is the current directory or contains it")
    _fails([*command, "--overwrite", "--out", str(tmp_path)], capsys, "is the current directory or contains it")
    _fails([*command, "--overwrite", "--out", "sub/.."], capsys, "is the current directory or contains it")
    assert _tree(work) == before and (work / "important.txt").read_text() == "keep"


@pytest.mark.parametrize("command", [DISCOVER, SWEEP])
def test_overwrite_never_deletes_a_directory_circuitscan_did_not_write(tmp_path, capsys, command):
    mine = tmp_path / "mine"
    before = _user_dir(mine)
    _fails([*command, "--overwrite", "--out", str(mine)], capsys, "was not written by circuitscan")
    assert _tree(mine) == before
    # a forged-looking marker that is not circuitscan's is not enough
    (mine / MARKER).write_text(json.dumps({"written_by": "someone else"}))
    _fails([*command, "--overwrite", "--out", str(mine)], capsys, "was not written by circuitscan")
    assert (mine / "important.txt").read_text() == "keep"


def test_overwrite_never_follows_or_replaces_a_symlink(tmp_path, capsys):
    target = tmp_path / "target"
    before = _user_dir(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    _fails([*DISCOVER, "--overwrite", "--out", str(link)], capsys, "is a symbolic link")
    _fails([*SWEEP, "--overwrite", "--out", str(link)], capsys, "is a symbolic link")
    assert link.is_symlink() and _tree(target) == before


def test_overwrite_never_deletes_home_or_root(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    before = _user_dir(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "home" / "sub")
    _fails([*DISCOVER, "--overwrite", "--out", str(home)], capsys, "is the current directory or contains it")
    monkeypatch.chdir(tmp_path)
    _fails([*DISCOVER, "--overwrite", "--out", str(home)], capsys, "is a home directory")
    _fails([*DISCOVER, "--overwrite", "--out", "/"], capsys, "is the file system's root")
    assert _tree(home) == before


def test_overwrite_replaces_a_run_circuitscan_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*DISCOVER, "--out", str(out)]) == 0
    assert is_circuitscan_dir(out)
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "circuitscan" and marker["kind"] == "run"
    (out / "extra.txt").write_text("from the old run")
    assert main([*DISCOVER, "--overwrite", "--out", str(out), "--seed", "1"]) == 0
    assert not (out / "extra.txt").exists() and json.loads((out / "config.json").read_text())["sae"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no old copy or partial left
    capsys.readouterr()


def test_sweep_directories_carry_the_marker_and_overwrite_them(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*SWEEP, "--grid", "features=4", "--seeds", "1", "--no-figures", "--out", str(out)]) == 0
    assert is_circuitscan_dir(out) and json.loads((out / MARKER).read_text())["kind"] == "sweep"
    assert main([*SWEEP, "--grid", "features=8", "--seeds", "1", "--no-figures", "--overwrite",
                 "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"features": [8]}
    capsys.readouterr()


def test_run_files_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main([*DISCOVER, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    capsys.readouterr()


def test_a_second_writer_to_the_same_new_out_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = RunWriter(out)
    try:
        with pytest.raises(CircuitscanError, match="another circuitscan process is writing"):
            RunWriter(out)
        assert len(list(tmp_path.iterdir())) == 1  # the refused writer left nothing
    finally:
        first.abort()
    assert list(tmp_path.iterdir()) == []
    second = RunWriter(out)  # free again once the first is gone
    second.abort()


def test_evaluate_refuses_a_run_directory_in_use(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*DISCOVER, "--out", str(out)]) == 0
    metrics = (out / "metrics.json").read_text()
    capsys.readouterr()
    with lock_run(out):
        _fails(["evaluate", str(out), "--random-samples", "2"], capsys, "another circuitscan process is using")
        _fails(["report", str(out)], capsys, "another circuitscan process is using")
    assert (out / "metrics.json").read_text() == metrics


def test_a_second_sweep_into_a_directory_in_use_stops_at_once(tmp_path, capsys):
    out = tmp_path / "s"
    grid = [*SWEEP, "--grid", "features=4", "--seeds", "1", "--no-figures", "--out", str(out)]
    assert main(grid) == 0
    journal = (out / "journal.jsonl").read_bytes()
    before = _tree(out)
    capsys.readouterr()
    holder = subprocess.Popen(  # another process, as a running sweep would be
        [sys.executable, "-c", "import sys; from circuitscan.rundir import lock_run\n"
         f"with lock_run({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _fails([*grid, "--resume"], capsys, "another circuitscan process is using the sweep directory")
        _fails([*grid[:-2], "--grid", "features=4,8", "--out", str(out), "--resume"], capsys,
               "another circuitscan process is using the sweep directory")
        _fails([*grid, "--overwrite"], capsys, "another circuitscan process is using the sweep directory")
    finally:
        holder.communicate("")
    assert (out / "journal.jsonl").read_bytes() == journal and _tree(out) == before
    assert main([*grid[:-2], "--grid", "features=4,8", "--out", str(out), "--resume"]) == 0  # free again
    assert (out / "journal.jsonl").read_bytes().startswith(journal) and len((out / "journal.jsonl").read_bytes()) > len(journal)
    capsys.readouterr()
