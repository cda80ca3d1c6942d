"""Run directories: created atomically, read back by ``evaluate`` and ``report``.

A run is built in a hidden sibling directory and renamed into place when complete, so
an interrupted run leaves no directory that looks finished. Single files are written
to a temporary name and renamed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._timings import merge_wall_clock, split_wall_clock
from ._version import __version__
from .errors import CircuitscanError

CONFIG = "config.json"
SCORES = "scores.json"
METRICS = "metrics.json"
CODES = "codes.safetensors"
SAE = "sae.safetensors"
ACTIVATIONS = "activations.safetensors"
TIMINGS = "timings.json"
# scores.json: a method's ``pairs.meaning`` when it does not say (runs written before it did)
PAIR_COUNTS_MEANING = "U[h1,h2]: distinct code pairs seen on positives only"
"""Every wall-clock figure of the run's JSON files, so that those files are byte-identical
for the same seed: ``{file name: the subtree of that file's timed keys}``."""
TIMED_FILES = ("scores.json", "metrics.json")
# every directory circuitscan writes (run, SAE set, sweep) holds this file; --overwrite
# replaces a directory only when it does
MARKER = "circuitscan.json"


def write_marker(directory: Path, kind: str) -> None:
    """Mark ``directory`` as written by circuitscan (a ``kind`` of run, sweep...)."""
    write_json(directory / MARKER, {"written_by": "circuitscan", "kind": kind, "circuitscan_version": __version__})


def is_circuitscan_dir(path: Path) -> bool:
    """True when ``path`` is a real directory (not a symlink) holding circuitscan's marker."""
    marker = path / MARKER
    if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == "circuitscan"


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced or become a run directory, or None."""
    real = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == Path(real.anchor):
        return "is the file system's root"
    if real == cwd or real in cwd.parents:
        return "is the current directory or contains it"
    try:
        home = Path(os.path.realpath(Path.home()))
    except (KeyError, RuntimeError):  # no home directory known
        home = None
    if home is not None and (real == home or real in home.parents):
        return "is a home directory or contains one"
    return None


def check_not_protected(out: Path, flag: str = "--out") -> None:
    """Refuse ``.``, ``/``, a home directory (or anything containing them) and symlinks."""
    why = _protected(out)
    if why:
        raise CircuitscanError(f"{flag} {str(out)!r} {why}; give a new directory to write into")
    if out.is_symlink():
        raise CircuitscanError(
            f"{flag} {str(out)!r} is a symbolic link; give the real directory (a link is never followed "
            "or replaced)"
        )


def check_replaceable(out: Path, flag: str = "--out") -> None:
    """Refuse to replace ``out`` unless circuitscan wrote it (see :data:`MARKER`)."""
    check_not_protected(out, flag)
    if out.is_dir() and any(out.iterdir()) and not is_circuitscan_dir(out):
        raise CircuitscanError(
            f"--overwrite: {str(out)!r} was not written by circuitscan (it has no {MARKER}); refusing to "
            "delete it. Choose a new directory, or remove it yourself"
        )


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; follow the umask like open() does
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, so same inputs give the same bytes.

    The header (8-byte length, then JSON) lists metadata and tensors in hash order, which
    varies between processes; the tensors' offsets are explicit, so sorting loses nothing.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > n:  # cannot happen for a reordering; leave the file as it is
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def _clean(obj: Any) -> Any:
    """JSON-safe: tensors to lists, non-finite floats to strings."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")


def write_run_json(run_dir: Path, name: str, data: Any) -> None:
    """Write one JSON file of a run; for scores.json and metrics.json, the wall times go to
    timings.json (replaced atomically, the other files' entries kept)."""
    if name not in TIMED_FILES:
        write_json(run_dir / name, data)
        return
    data, timed = split_wall_clock(_clean(data))
    path = run_dir / TIMINGS
    timings = read_json(path) if path.is_file() else {}
    timings = timings if isinstance(timings, dict) else {}
    if timed is None:
        timings.pop(name, None)
    else:
        timings[name] = timed
    write_json(run_dir / name, data)
    write_json(path, timings)


def read_run_json(run_dir: Path, name: str, what: str = "a circuitscan run directory") -> Any:
    """One JSON file of a run with its wall times from timings.json put back (runs written
    before timings.json keep them inline, and read as they are)."""
    data = read_json(run_dir / name, what)
    path = run_dir / TIMINGS
    if name in TIMED_FILES and path.is_file():
        try:
            timings = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            timings = {}  # the times are a courtesy: a damaged timings.json loses only them
        if isinstance(timings, dict):
            merge_wall_clock(data, timings.get(name))
    return data


def read_json(path: Path, what: str = "a circuitscan run directory") -> Any:
    """A JSON file of a run (or SAE) directory; ``what`` names the directory in errors."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CircuitscanError(f"{str(path)!r} does not exist; is {str(path.parent)!r} {what}?") from exc
    except json.JSONDecodeError as exc:
        raise CircuitscanError(f"{str(path)!r} is not valid JSON: {exc}") from exc


def check_out_dir(out: Path, *, overwrite: bool = False) -> None:
    """Fail early, before any work, if ``out`` cannot become a fresh run directory."""
    check_not_protected(out)
    if out.exists() and not out.is_dir():
        raise CircuitscanError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CircuitscanError(
                f"--out {str(out)!r} is not empty; choose a new directory (or pass --overwrite to replace it)"
            )
        check_replaceable(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".circuitscan-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise CircuitscanError(f"cannot write the run directory {str(out)!r}: {exc.strerror or exc}") from exc


class RunWriter:
    """Collects a run's files in a temporary directory; :meth:`commit` moves it into place."""

    def __init__(self, out: Path, *, overwrite: bool = False, kind: str = "run") -> None:
        check_out_dir(out, overwrite=overwrite)
        self.out = out
        self.overwrite = overwrite
        parent = out.resolve().parent
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        _follow_umask(self.tmp)
        # hold a lock on our partial directory while we write; another writer to the same
        # --out sees it and stops at once instead of clashing after all the work
        self._lock = _lock_fd(self.tmp)
        try:
            _check_no_other_writer(parent, out.name, self.tmp)
            write_marker(self.tmp, kind)
        except BaseException:
            self.abort()
            raise

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def json(self, name: str, data: Any) -> None:
        self.path(name)
        write_run_json(self.tmp, name, data)

    def commit(self) -> Path:
        _follow_umask_tree(self.tmp)
        old = None
        if self.out.exists() or self.out.is_symlink():
            check_not_protected(self.out)
            if any(self.out.iterdir()):
                if not self.overwrite:
                    raise CircuitscanError(f"--out {str(self.out)!r} was filled by someone else meanwhile")
                check_replaceable(self.out)
                # move the old run aside first: if the rename below fails, it is put back
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.tmp.parent))
                os.replace(self.out, old / "run")
            else:
                self.out.rmdir()
        try:
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.replace(old / "run", self.out)
                old.rmdir()
            raise
        self._release()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def abort(self) -> None:
        self._release()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _follow_umask(path: Path) -> None:
    """mkdtemp makes 0700 directories; give a run directory the umask's usual mode instead."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)


def _follow_umask_tree(root: Path) -> None:
    """Files some writers (safetensors) create 0600: give every file the umask's mode."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def _lock_fd(path: Path, *, blocking: bool = False) -> int:
    """An exclusive lock (flock) on directory ``path``; raises BlockingIOError when held."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_no_other_writer(parent: Path, name: str, own: Path) -> None:
    for other in parent.glob(f".{name}.partial-*"):
        if other == own or not other.is_dir():
            continue
        try:
            fd = _lock_fd(other)
        except BlockingIOError:
            raise CircuitscanError(
                f"another circuitscan process is writing {str(parent / name)!r} now; wait for it or choose "
                "another --out"
            ) from None
        except OSError:
            continue  # removed meanwhile
        os.close(fd)  # a leftover of a killed run: not ours to judge, and it does not clash


_HELD: set[tuple[int, int]] = set()  # directories this process holds locks on (device, inode)


@contextmanager
def lock_run(run_dir: str | Path, what: str = "run directory", *, reenter: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (evaluate, report and sweep write into a directory).

    With ``reenter``, a process that holds the lock already takes it again (a sweep locks its
    directory in the command and in :func:`~circuitscan.sweep.runner.run_sweep`).

    Raises:
        CircuitscanError: another circuitscan process holds the lock.
    """
    path = Path(run_dir)
    if not path.is_dir():
        yield  # the command reports the missing directory in its own words
        return
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    if reenter and key in _HELD:
        yield
        return
    try:
        fd = _lock_fd(path)
    except BlockingIOError:
        raise CircuitscanError(
            f"another circuitscan process is using the {what} {str(path)!r}; wait for it to finish, then "
            "run this again"
        ) from None
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)


def disk_full_message(exc: OSError, where: str | Path) -> str | None:
    """A plain message for a full disk or quota, else None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device while writing {str(where)!r}; free some space and run this again"
    return None


@contextmanager
def open_run(out: str | Path | None, *, overwrite: bool = False) -> Iterator[RunWriter | None]:
    """A :class:`RunWriter` for ``out`` (``None`` when ``out`` is), checked before any work.

    The block calls :meth:`RunWriter.commit` itself when it is done; if the block raises,
    the partial directory is removed and nothing appears at ``out``.
    """
    if out is None:
        yield None
        return
    with RunWriter(Path(out), overwrite=overwrite) as writer:
        try:
            yield writer
        except OSError as exc:
            msg = disk_full_message(exc, out)
            if msg:
                raise CircuitscanError(msg) from exc
            raise
