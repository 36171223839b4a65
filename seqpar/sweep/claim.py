"""Claims: which worker runs which sweep point (or study trial), safe across processes and hosts.

A worker owns a directory by creating `claim.json` in it with `O_CREAT | O_EXCL`: the
filesystem lets exactly one creator win, on one host or on several sharing an NFS mount.
The file names its owner (host, pid, the launching command's session) and, when the work
ends, its outcome (`finished`, `status`, `methods`, `error`); it is the point's entry in
the sweep index, so the index can be rebuilt from the points alone and no two workers
ever write the same file.

While it works, the owner touches the file every `HEARTBEAT_S` (a thread), so a claim is
*live* while its heartbeat is fresh and, on the owner's own host, its pid exists. A claim
whose owner died (SIGKILL, a lost node) is *stale*: a live worker of the same sweep takes
it over (and continues its checkpoints), under a lock file, so two workers never take over
the same point. Across hosts, a dead owner is noticed after `STALE_AFTER_S` without a heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqpar.records.layout import CLAIM
from seqpar.records.writer import atomic_write_json

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: the owner is gone (or its host or filesystem is stuck)


@dataclass(frozen=True)
class Owner:
    """Who claims: one worker process of one launching command (`session`)."""

    host: str
    pid: int
    session: str

    @classmethod
    def me(cls, session: str) -> Owner:
        return cls(socket.gethostname(), os.getpid(), session)


def read_claim(directory: Path) -> dict[str, Any] | None:
    """The claim in `directory` with its heartbeat (`mtime`), None if there is none.

    A claim whose JSON is unreadable (its creator died between creating and writing it)
    reads as `{}` plus its mtime: it is live while that is fresh."""
    path = Path(directory) / CLAIM
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return {"mtime": time.time()}  # unreadable for now: assume its owner is alive
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = {}
    info = info if isinstance(info, dict) else {}
    info["mtime"] = mtime
    return info


def pid_alive(pid: int) -> bool:
    """True while `pid` runs on this host. A zombie (killed, not yet reaped by its parent: a
    launcher waiting on another worker) still answers signal 0, so its state is read too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (not Linux), or it exited just now: signal 0 answered
        return True
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")  # the state follows "(comm) "


def is_live(info: dict[str, Any], now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
    """An unfinished claim whose owner still runs: heartbeat fresh and, on this host, the pid alive."""
    if info.get("finished") is not None:
        return False
    now = time.time() if now is None else now
    if now - float(info.get("mtime", 0.0)) > stale_after:
        return False
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return pid_alive(info["pid"])
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing); NFS clients forward it to the server."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Claim:
    """A claim this process holds: heartbeats until `finish`, which records the outcome."""

    def __init__(self, directory: Path, info: dict[str, Any], heartbeat_s: float = HEARTBEAT_S):
        self.directory = Path(directory)
        self.info = dict(info)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name=f"heartbeat {directory}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(OSError):  # a missed beat is harmless; ten are not
                os.utime(self.directory / CLAIM)

    def finish(self, status: str, **outcome: Any) -> None:
        """Stop the heartbeat and record the outcome: the claim stays, as the point's record."""
        self._stop.set()
        self._thread.join()
        self.info.update(outcome, status=status, finished=time.time())
        atomic_write_json(self.directory / CLAIM, self.info)


def try_claim(
    directory: Path,
    owner: Owner,
    may_take_over: Callable[[dict[str, Any]], bool] = lambda info: False,
    *,
    lock_file: Path | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    note: dict[str, Any] | None = None,
) -> Claim | None:
    """Claim `directory` for `owner`; None if another worker has it.

    An existing claim is replaced only if `may_take_over(info)` says so, and only under
    `lock_file` (default: beside the directory), re-read there so that of two workers
    deciding to take over the same claim, one does. `note` adds fields to the new claim."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CLAIM
    body = {"host": owner.host, "pid": owner.pid, "session": owner.session, "started": time.time(), **(note or {})}
    if not _create(path, body):
        with file_lock(lock_file or directory.parent / f".{directory.name}.lock"):
            info = read_claim(directory)
            if info is not None and not may_take_over(info):
                return None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if not _create(path, body):  # a worker that never needed the lock got there first
                return None
    return Claim(directory, body, heartbeat_s)


def _create(path: Path, body: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(body) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True
