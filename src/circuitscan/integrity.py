"""Fingerprints that tie a run to its inputs, so ``evaluate`` never scores other prompts.

``config.json`` records ``task.prompts_sha256`` (every token id, mask and answer of the
prompts the run used) and, for a task file, its absolute path and ``file_sha256``;
:func:`check_same_task` compares a rebuilt prompt set against them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CircuitscanError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompts_sha256(prompts: Any) -> str:
    """A digest of the prompts' tokens, masks and answers (not of their text or metadata)."""
    import torch

    h = hashlib.sha256()
    for name in ("positive", "negative", "positive_mask", "negative_mask", "answers", "wrong_answers"):
        t = getattr(prompts, name, None)
        h.update(name.encode())
        if t is None:
            h.update(b"-")
            continue
        t = t.detach().to("cpu", dtype=torch.int64).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    for key in ("answer_sets", "wrong_answer_sets"):
        sets = prompts.metadata.get(key)
        if sets is not None:
            h.update(key.encode() + repr(sets).encode())
    return h.hexdigest()


def check_same_task(prompts: Any, task: Mapping[str, Any]) -> None:
    """Refuse prompts that differ from those a run recorded in ``config.json``'s ``task``."""
    want_file, have_file = task.get("file_sha256"), prompts.metadata.get("file_sha256")
    if want_file and have_file and want_file != have_file:
        raise CircuitscanError(
            f"the task file {prompts.metadata.get('file')!r} has changed since the run was made (sha256 "
            f"{want_file[:12]}... then, {have_file[:12]}... now); evaluating it would score other prompts. "
            "Restore the file or run discover again"
        )
    want = task.get("prompts_sha256")
    if want:
        have = prompts_sha256(prompts)
        if want != have:
            raise CircuitscanError(
                f"the rebuilt prompts of task {task.get('name')!r} differ from the run's (sha256 {want[:12]}... "
                f"then, {have[:12]}... now); evaluating them would score other prompts. The task file or "
                "generator has changed since the run was made"
            )
