"""A record's identity beyond its own spec: the data files it was trained on, and a sweep's spec.

A run directory is continued only with what it started with. Its spec is compared by the
runner (`spec.yaml` against the spec given); what a spec only *names* is compared here:

- data: every file a task reads (`TaskConfig.data_files()`: a `dataset`'s `.npz`, a
  `char_lm` text, a user task's own) is recorded with its resolved path and sha256 in
  `summary.json` (`task.data`) when the run starts, and checked when it is resumed, when a
  sweep or study worker picks up a point that already has a record, and when a sweep
  (`sweep.json`'s `identity`) is resumed or joined.
- a sweep's spec: `sweep.json` keeps the `sweep.yaml` it started with; a changed one is
  refused, naming the first key that differs.

Each file is hashed once per process (cached by path, size, mtime and inode), however many
points or methods name it. Mismatches are `IdentityError`, one line (the CLI exits 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DataIdentity = dict[str, dict[str, str]]  # spec key (task.path) -> {"path": resolved path, "sha256": hex digest}
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


class IdentityError(Exception):
    """What a record started with differs from what it would continue with; the message is one line."""


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), read once per process while its size, mtime and inode stay the same."""
    real = Path(path).resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def data_identity(files: Mapping[str, Path]) -> DataIdentity:
    """`{key: {"path", "sha256"}}` of the files a spec names (`{"task.path": Path(...)}`); IdentityError if one is unreadable."""
    out: DataIdentity = {}
    for key, path in files.items():
        try:
            out[key] = {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}
        except OSError as e:
            raise IdentityError(f"{key}: cannot read {path} ({e.strerror or e})") from None
    return out


def short(digest: str) -> str:
    return digest[:12]


def check_data(recorded: Any, current: DataIdentity, where: str, what: str = "the run") -> None:
    """IdentityError unless every data file `recorded` names has the same bytes (sha256) as the one `current` names.

    A record without a data identity (written before seqpar recorded one) has nothing to check."""
    if not isinstance(recorded, dict):
        return
    for key, was in recorded.items():
        if not isinstance(was, dict) or "sha256" not in was:
            continue
        now = current.get(key)
        if now is None:
            raise IdentityError(f"{where}: {what} started with data file {key} {was.get('path')}, which the spec no longer names")
        if now["sha256"] != was["sha256"]:  # the bytes decide: the same data reached by another path is the same data
            raise IdentityError(
                f"{where}: {key} {now['path']} changed since {what} started (sha256 {short(was['sha256'])}... then, "
                f"{short(now['sha256'])}... now); it continues only on the data it started with: restore the file, or start anew"
            )


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The dotted key of the first difference between two YAML/JSON values (`train.steps`, `methods.0.lr`), None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in old or key not in new:
                return f"{prefix}{key}"
            found = first_difference(old[key], new[key], f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{prefix}{i}.")
            if found is not None:
                return found
        return None
    return None if old == new else (prefix.rstrip(".") or "(the whole spec)")
