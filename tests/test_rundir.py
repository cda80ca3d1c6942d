"""Run directories appear whole or not at all."""

from __future__ import annotations

import pytest

from circuitscan.rundir import open_run, read_json


def test_open_run_commits_on_request_and_leaves_nothing_when_the_block_raises(tmp_path):
    with open_run(None) as writer:
        assert writer is None
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), open_run(out) as writer:
        writer.json("a.json", {"x": 1})
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the run nor its partial directory
    with open_run(out) as writer:
        writer.json("a.json", {"x": 1})
        writer.commit()
    assert read_json(out / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
