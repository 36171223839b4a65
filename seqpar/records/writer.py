"""The one writer of run records: run directories, atomic files, metrics lines, environment record.

A run directory holds `spec.yaml` (the resolved spec), `metrics.jsonl` (one line
per log/eval point) and `summary.json` (rewritten atomically after every
method, so a crash or Ctrl-C never loses a finished method's result), and while
a method is unfinished, `checkpoints/` (see `seqpar.train.checkpoint`).

Nothing is ever left half-written: whole files go through a temporary file and a
rename; metrics lines are appended with one `write` each and cut back if that
write fails, and a reader drops a torn last line (a process killed mid-write).

Nothing is written or deleted outside the run either: every writer of a file or folder
below a run directory (checkpoints, metrics.jsonl, TensorBoard folders, plots, the MLflow
store, worker logs) asks `within_run` first, which follows every symlink on the way and
refuses a path that leaves the run directory (`OutsideRunDir`, one line). A symlink that
stays inside the run directory is followed as usual.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from seqpar.records.layout import METRICS
from seqpar.records.reader import read_metrics


class OutputError(Exception):
    """The output location is unusable (exists, is a file, not writable); the CLI exits 2."""


class WriteError(OSError):
    """A file of a record could not be written (the disk is full, the filesystem went read-only...).

    Its message names the file: "cannot write RUN/metrics.jsonl: No space left on device"."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        full = "; the disk is full" if self.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"cannot write {self.path}: {self.strerror}{full}"


class OutsideRunDir(WriteError):
    """A path below a run directory that a symlink leads out of it; nothing is written or deleted there."""

    def __init__(self, path: Path, real: Path, run_dir: Path):
        OSError.__init__(self, errno.EXDEV, "outside the run directory", str(path))
        self.path, self.real, self.run_dir = Path(path), Path(real), Path(run_dir)

    def __str__(self) -> str:
        return (
            f"{self.path}: a symlink leads it to {self.real}, outside the run directory {self.run_dir}; "
            "seqpar writes and deletes only inside a run (remove the link)"
        )


def within_run(run_dir: Path, path: Path) -> Path:
    """`path` (a file or folder at or below `run_dir`, existing or not), once checked that following
    every symlink on its way, its own last component included, keeps it inside `run_dir`; else
    `OutsideRunDir`. The one guard of every write and delete below a run directory."""
    root = Path(run_dir).resolve()
    real = Path(path).resolve()  # follows the links that exist, a dangling one included
    if real != root and root not in real.parents:
        raise OutsideRunDir(Path(path), real, Path(run_dir))
    return Path(path)


def _write_error(path: Path, e: OSError) -> WriteError:
    return e if isinstance(e, WriteError) else WriteError(path, e)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN), arrays become lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax scalars and arrays
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def atomic_write(path: Path, write: Callable[[IO[Any]], object], mode: str = "w") -> None:
    """Write via `write(file)` into a temp file beside `path`, fsync, then rename over `path`:
    readers see the old file or the new one, never a torn one."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would make shared result directories unreadable
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, most likely: the temp file goes, the old file stays
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def new_run_dir(results_root: Path, name: str, out: Path | None = None) -> Path:
    """Create a fresh, writable run directory; never reuses a non-empty one.

    Every way the location can be unusable (a file in the way, a read-only filesystem, a name
    too long, no permission) is an `OutputError` naming the path."""
    if out is not None:
        target = Path(out)
        where = f"--out {target}"
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = Path(results_root) / name / f"{stamp}-{secrets.token_hex(2)}"
        where = str(target)
    try:
        if out is not None:
            if target.exists() and not target.is_dir():
                raise OutputError(f"{where}: is a file, expected a directory")
            if target.is_dir() and any(target.iterdir()):
                raise OutputError(f"{where}: directory exists and is not empty; runs are never overwritten")
        target.mkdir(parents=True, exist_ok=out is not None)
    except OSError as e:
        raise OutputError(f"{where}: cannot create the run directory ({e.strerror or e})") from None
    if not os.access(target, os.W_OK | os.X_OK):  # e.g. an existing empty directory on a read-only filesystem
        raise OutputError(f"{where}: the directory is not writable")
    return target


class MetricsLog:
    """Append-only JSON lines, one `os.write` per line.

    A line reaches the file whole or not at all: a failed write (disk full, an exception)
    is cut back to the previous end, and a process killed inside the write syscall can at
    worst leave a torn last line, which `read_metrics` drops.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_error(self.path, e) from e

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode()
        end = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # short writes are legal; finish the line
                written += os.write(self._fd, data[written:])
        except BaseException as e:
            os.ftruncate(self._fd, end)
            if isinstance(e, OSError):
                raise _write_error(self.path, e) from e
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def rewrite_metrics(run_dir: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Atomically keep only the lines `keep` accepts (used on resume to drop lines past a checkpoint)."""
    lines = [rec for rec in read_metrics(run_dir) if keep(rec)]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(rec, allow_nan=False) + "\n" for rec in lines))


class RunDirBusy(Exception):
    """Another process is writing this run directory."""


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory itself (no lock file) while writing it.

    Guards against `--resume` of a run that is still going. Where `fcntl` is missing
    (Windows) the lock is skipped."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir}: another seqpar process is writing this run directory") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    """Commit and dirty flag of the seqpar checkout, if seqpar runs from one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {
        "versions": {p: _version(p) for p in ("seqpar", "jax", "jaxlib", "flax", "optax", "numpy", "pydantic")},
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git_state(),
        "command": sys.argv,
    }
