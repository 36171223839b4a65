"""A user's own sequences from an `.npz` file (`numpy.savez(path, x=..., y=...)`).

Arrays (names other than these are refused, so a misspelt one is not silently ignored):

    x         (N, T) integer tokens (one-hot in; `vocab` = largest token + 1 unless given)
              or (N, T, D) floats
    y         (N,) one target per sequence, scored at the last step (or where `score_at`
              says), or (N, T) / (N, T, K) per-step targets
    mask      optional (N, T) 0/1: which steps are real (padding 0); per-step targets are
              scored where it is 1, a per-sequence target at the last real step
    score_at  optional (T,) or (N, T) 0/1: where a per-sequence target is scored
    x_val, y_val, mask_val, score_at_val, x_test, ...: optional explicit splits

Without explicit splits, the rows of `x` are shuffled with `split_seed` (default: the
spec's seed) and cut into test (`test_fraction`), validation (`val_fraction`) and
training parts. Classification or regression follows `y`'s dtype (integers: classes,
`classes` = largest label + 1 unless given; floats: MSE) unless `kind` states it.

Tokens and class labels must fit a 32-bit index (at most 2**31 - 1): they are stored as
int32, and a larger one would silently wrap to another id. Every problem with the file is
one line naming the file and the array, raised while the
spec is validated, so the CLI exits 2 before anything is written. That includes a file
whose arrays declare more than `max_mb` uncompressed (a zip bomb: a few MB on disk that
inflate to GBs): the sizes in the zip directory and in each `.npy` header are read first,
and nothing is inflated past them.

Memoryless baseline: for classification on integer tokens, the conditional entropy of the
target given the current token and the position, H(y_t | x_t, t), estimated like
char_lm's: add-α counts over the training part's scored steps, α chosen on validation,
cross-entropy on test. Where that is not countable (float inputs, regression, too many
cells) there is no formula, and the runner trains the memoryless baseline instead
(`train.baseline_trained: auto`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from seqpar.config import KeyedError
from seqpar.tasks.base import ClassificationTask, Dataset, RegressionTask, Task, TaskConfig, resolve_path
from seqpar.tasks.registry import TASKS

SPLITS = {"train": "", "val": "_val", "test": "_test"}  # split -> suffix of its array names
PER_SPLIT = ("x", "y", "mask", "score_at")
KNOWN = tuple(a + s for s in SPLITS.values() for a in PER_SPLIT)
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)  # add-α smoothing of the baseline's counts, chosen on validation
MAX_COUNT_CELLS = 10**7  # (t, token, class) cells beyond which the baseline is trained, not counted
MAX_ID = int(np.iinfo(np.int32).max)  # tokens and labels become int32 indices: a larger one would wrap around
MAX_MB = 1024.0  # default cap on the uncompressed size of one file's arrays (task.max_mb raises it)


class DataError(ValueError):
    """A problem with the file; the message names the array (the file is prefixed by the caller)."""


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable


def check_sizes(path: str, max_mb: float) -> None:
    """Refuse an archive whose members declare more than `max_mb` MB, before anything is inflated.

    Two declarations, both read without decompressing the data: the zip directory's
    uncompressed size of each member, and the shape and dtype in each `.npy` header (what
    numpy would allocate). Not a zip: left to `np.load`'s own errors."""
    cap = max_mb * 1e6
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(6) == np.lib.format.MAGIC_PREFIX:  # np.load would allocate what its header says
                raise DataError("holds a single .npy array, expected an .npz archive of named arrays (numpy.savez(path, x=..., y=...))")
        return
    total = 0.0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                declared = float(info.file_size)
                if info.filename.endswith(".npy") and declared <= cap:
                    declared = max(declared, _npy_bytes(z, info, name))
                total += declared
                if total > cap:
                    raise DataError(
                        f"array {name!r}: declares {_human(declared)} uncompressed, above the cap of {_human(cap)} for the arrays of "
                        f"one file (task.max_mb: {max_mb:g}); raise task.max_mb if the file is genuine"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
        raise DataError(f"not a readable .npz archive ({e})") from None


def _npy_bytes(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> float:
    """The bytes a member's `.npy` header says its array holds (reads the header only)."""
    fmt = np.lib.format
    try:
        with z.open(info) as f:
            version = fmt.read_magic(f)
            shape, _, dtype = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"array {name!r}: unreadable .npy header ({e})") from None
    return float(math.prod(shape)) * dtype.itemsize


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int, max_mb: float = MAX_MB) -> dict[str, np.ndarray]:
    del mtime_ns, size  # part of the cache key only: an edited file is read again
    check_sizes(path, max_mb)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError):
        raise DataError("not an .npz archive (expected named arrays saved with numpy.savez(path, x=..., y=...))") from None
    if isinstance(archive, np.ndarray):
        raise DataError("holds a single .npy array, expected an .npz archive of named arrays (numpy.savez(path, x=..., y=...))")
    out = {}
    with archive:
        for name in archive.files:
            try:
                out[name] = archive[name]
            except ValueError:  # object arrays need pickle, which is never allowed
                raise DataError(
                    f"array {name!r}: ragged or object array; store equal-length sequences (pad them and mark real steps in 'mask')"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise DataError(f"array {name!r}: unreadable ({e})") from None
    return out


def load_arrays(path: Path, max_mb: float = MAX_MB) -> dict[str, np.ndarray]:
    """The file's arrays; OSError if it cannot be opened, DataError if it is not an .npz of plain
    arrays or its arrays declare more than `max_mb` MB uncompressed."""
    st = path.stat()
    if path.is_dir():
        raise IsADirectoryError(str(path))
    return _load(str(path), st.st_mtime_ns, st.st_size, max_mb)


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, T) int32 tokens or (n, T, D) float32
    y: np.ndarray  # (n, T) int32 labels or (n, T, K) float32
    mask: np.ndarray  # (n, T) float32: scored steps


@dataclass(frozen=True)
class Parsed:
    splits: dict[str, Split]
    tokens: bool
    classification: bool
    input_dim: int
    output_dim: int
    length: int


def _shape(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)} {a.dtype}"


def _check_x(name: str, x: np.ndarray) -> None:
    if x.dtype.kind in "iub":
        if x.ndim != 2:
            raise DataError(f"array {name!r}: integer tokens must be (N, T), got {_shape(x)}")
    elif x.dtype.kind == "f":
        if x.ndim != 3:
            raise DataError(f"array {name!r}: float features must be (N, T, D) (one feature per step: x[..., None]), got {_shape(x)}")
    else:
        raise DataError(f"array {name!r}: expected (N, T) integer tokens or (N, T, D) floats, got {_shape(x)}")
    if x.size == 0:
        raise DataError(f"array {name!r}: empty ({_shape(x)})")
    _check_finite(name, x)
    if x.dtype.kind in "iu" and x.min() < 0:
        raise DataError(f"array {name!r}: negative token {int(x.min())}; tokens are 0, 1, ..., vocab - 1")
    if x.dtype.kind in "iu" and int(x.max()) > MAX_ID:
        raise DataError(f"array {name!r}: token {int(x.max())} does not fit a 32-bit index (at most {MAX_ID}); renumber the tokens")


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise DataError(f"array {name!r}: {int(np.sum(~np.isfinite(a)))} non-finite value(s) (NaN or inf)")


def _check_01(name: str, a: np.ndarray, shapes: list[tuple[int, ...]], what: str) -> np.ndarray:
    if tuple(a.shape) not in shapes:
        raise DataError(f"array {name!r}: expected {what} of shape {' or '.join(map(str, shapes))}, got {_shape(a)}")
    _check_finite(name, a)
    if a.dtype.kind not in "iubf" or not np.all((a == 0) | (a == 1)):
        raise DataError(f"array {name!r}: values must be 0 or 1")
    return a.astype(np.float32)


def _split_arrays(arrays: dict[str, np.ndarray], split: str) -> tuple[dict[str, np.ndarray], str] | None:
    sfx = SPLITS[split]
    got = {a: arrays[a + sfx] for a in PER_SPLIT if a + sfx in arrays}
    if not got:
        return None
    for a in ("x", "y"):
        if a not in got:
            other = "y" if a == "x" else "x"
            raise DataError(f"array {a + sfx!r} missing: {other + sfx!r} is given, and a split needs both")
    return got, sfx


def _targets(name: str, y: np.ndarray, n: int, t: int) -> bool:
    """True for one target per sequence; checks the shape against x's (N, T)."""
    if y.dtype.kind not in "iubf":
        raise DataError(f"array {name!r}: expected integer labels or float targets, got {_shape(y)}")
    _check_finite(name, y)
    if y.ndim == 1 and y.shape[0] == n:
        return True
    if y.ndim in (2, 3) and tuple(y.shape[:2]) == (n, t):
        return False
    raise DataError(
        f"array {name!r}: expected (N,) = ({n},) one target per sequence or (N, T[, K]) = ({n}, {t}[, K]) per-step targets, got {_shape(y)}"
    )


def _scored(got: dict[str, np.ndarray], sfx: str, per_sequence: bool, n: int, t: int) -> np.ndarray:
    mask = _check_01("mask" + sfx, got["mask"], [(n, t)], "0/1 per step") if "mask" in got else np.ones((n, t), np.float32)
    if not per_sequence:
        if "score_at" in got:
            raise DataError(f"array {'score_at' + sfx!r}: only for one target per sequence (y of shape (N,)); per-step targets use 'mask'")
        return mask
    if "score_at" in got:
        at = _check_01("score_at" + sfx, got["score_at"], [(t,), (n, t)], "0/1 per step")
        return np.broadcast_to(at, (n, t)) * mask
    if not np.all(mask.any(axis=1)):
        raise DataError(f"array {'mask' + sfx!r}: a sequence has no real step (all 0)")
    last = t - 1 - np.argmax(mask[:, ::-1], axis=1)  # the last real step of each sequence
    return (np.arange(t) == last[:, None]).astype(np.float32)


def parse(arrays: dict[str, np.ndarray], kind: str, classes: int | None, vocab: int | None) -> tuple[Parsed, dict[str, bool]]:
    """Check every array and encode each split given in the file; (parsed, which splits were explicit)."""
    unknown = sorted(set(arrays) - set(KNOWN))
    if unknown:
        raise DataError(f"unknown array {unknown[0]!r}; expected x and y, optionally {', '.join(KNOWN[2:])}")
    if "x" not in arrays or "y" not in arrays:
        missing = "x" if "x" not in arrays else "y"
        raise DataError(f"array {missing!r} missing (found: {', '.join(sorted(arrays)) or 'no arrays'})")
    raw: dict[str, tuple[dict[str, np.ndarray], str]] = {}
    for split in SPLITS:
        got = _split_arrays(arrays, split)
        if got is not None:
            raw[split] = got
    x0 = raw["train"][0]["x"]
    _check_x("x", x0)
    tokens = x0.dtype.kind in "iub"
    t = x0.shape[1]
    per_seq = _targets("y", raw["train"][0]["y"], x0.shape[0], t)
    y_float = raw["train"][0]["y"].dtype.kind == "f"
    classification = kind == "classification" or (kind == "auto" and not y_float)
    out = {}
    for split, (got, sfx) in raw.items():
        x, y = got["x"], got["y"]
        _check_x("x" + sfx, x)
        if (x.dtype.kind in "iub") != tokens or x.shape[1:] != x0.shape[1:]:
            raise DataError(f"array {'x' + sfx!r}: {_shape(x)} does not match 'x' ({_shape(x0)}) beyond the number of sequences")
        n = x.shape[0]
        if _targets("y" + sfx, y, n, t) != per_seq or (y.dtype.kind == "f") != y_float or y.shape[1:] != raw["train"][0]["y"].shape[1:]:
            raise DataError(f"array {'y' + sfx!r}: {_shape(y)} does not match 'y' ({_shape(raw['train'][0]['y'])})")
        mask = _scored(got, sfx, per_seq, n, t)
        if classification:
            if y.ndim == 3:
                raise DataError(f"array {'y' + sfx!r}: class labels must be (N,) or (N, T), got {_shape(y)}")
            if y_float and not np.all(y == np.round(y)):
                raise DataError(f"array {'y' + sfx!r}: kind classification needs integer labels, got non-integer values")
            if y.min() < 0:
                raise DataError(f"array {'y' + sfx!r}: negative label {int(y.min())}; labels are 0, 1, ..., classes - 1")
            if y.max() > MAX_ID:
                top = int(y.max()) if y.dtype.kind in "iu" else f"{float(y.max()):g}"
                raise DataError(f"array {'y' + sfx!r}: label {top} does not fit a 32-bit index (at most {MAX_ID}); renumber the classes")
            yy = np.broadcast_to(y[:, None], (n, t)) if per_seq else y
            yy = yy.astype(np.int32)
        else:
            yy = y.astype(np.float32)
            yy = np.broadcast_to(yy[:, None, None], (n, t, 1)) if per_seq else (yy[..., None] if yy.ndim == 2 else yy)
        out[split] = Split(x.astype(np.int32) if tokens else x.astype(np.float32), np.ascontiguousarray(yy), mask)
    for split, s in out.items():
        if s.mask.sum() == 0:
            raise DataError(f"array {'mask' + SPLITS[split]!r}: no step is scored")
    if tokens:
        top = max(int(s.x.max()) for s in out.values())
        if vocab is not None and top >= vocab:
            raise DataError(f"array 'x': token {top} out of range for vocab={vocab} (tokens are 0..{vocab - 1})")
        input_dim = vocab or top + 1
    else:
        input_dim = x0.shape[2]
    if classification:
        top = max(int(s.y.max()) for s in out.values())
        if classes is not None and top >= classes:
            raise DataError(f"array 'y': label {top} out of range for classes={classes} (labels are 0..{classes - 1})")
        output_dim = max(classes or top + 1, 2)
    else:
        output_dim = out["train"].y.shape[-1]
    explicit = {split: split in out for split in SPLITS}
    return Parsed(out, tokens, classification, input_dim, output_dim, t), explicit


def partition(
    parsed: Parsed, explicit: dict[str, bool], val_fraction: float, test_fraction: float, seed: int, path: Path
) -> dict[str, Split]:
    """Every split: explicit ones as given, the rest cut from the shuffled rows of `x`."""
    pool = parsed.splits["train"]
    n = pool.x.shape[0]
    sizes = {s: (0 if explicit[s] else int(round(n * f))) for s, f in (("test", test_fraction), ("val", val_fraction))}
    n_train = n - sizes["test"] - sizes["val"]
    if n_train < 1 or any(not explicit[s] and k < 1 for s, k in sizes.items()):
        which = "val_fraction" if not explicit["val"] and sizes["val"] < 1 else "test_fraction"
        raise KeyedError(
            which,
            f"{path}: its {n} sequences give {n_train} for training, {sizes['val']} for validation and {sizes['test']} for test; "
            "each split needs at least one (change the fractions or give x_val/y_val, x_test/y_test)",
        )
    perm = np.random.default_rng(seed).permutation(n)
    n_held = sizes["test"] + sizes["val"]
    cuts = {"test": perm[: sizes["test"]], "val": perm[sizes["test"] : n_held], "train": perm[n_held:]}
    out = {}
    for split in SPLITS:
        if explicit[split] and split != "train":
            out[split] = parsed.splits[split]
        else:
            rows = np.sort(cuts[split])
            out[split] = Split(pool.x[rows], pool.y[rows], pool.mask[rows])
    return out


class GivenArrays:
    """Arrays handed over in memory (`seqpar.run(spec, data={...})`), kept beside the config that
    checked them; two are equal when their contents are (by digest), so configs still compare."""

    def __init__(self, arrays: dict[str, Any]):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        digest = hashlib.sha256()
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            digest.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
            digest.update(a.tobytes())
        self.sha256 = digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GivenArrays) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


@TASKS.register("dataset")
class DatasetConfig(TaskConfig):
    """Your own sequences from an .npz file (x, y, optional mask and splits), or the same arrays in memory."""

    type: Literal["dataset"] = "dataset"
    path: str | None = Field(
        None,
        min_length=1,
        description=".npz file with arrays x, y (optional mask, score_at, x_val/y_val, x_test/y_test); a relative path is "
        "resolved against the spec file's directory and recorded absolute. Omit it to pass the same arrays in memory: "
        "seqpar.run(spec, data={'x': ..., 'y': ...})",
    )
    kind: Literal["auto", "classification", "regression"] = Field("auto", description="auto: classification if y holds integers")
    classes: int | None = Field(None, ge=2, description="number of classes (default: largest label + 1)")
    vocab: int | None = Field(None, ge=1, description="number of distinct tokens of integer x (default: largest token + 1)")
    val_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="share of x's rows held out for validation")
    test_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="share of x's rows held out for test")
    split_seed: int | None = Field(None, ge=0, description="seed of the row shuffle before splitting (default: the spec's seed)")
    max_mb: float = Field(
        MAX_MB,
        gt=0,
        allow_inf_nan=False,
        description="refuse a file whose arrays declare more MB than this uncompressed (checked before anything is read)",
    )
    # Shown by `seqpar tasks`, which cannot build this task without a file.
    loss_doc: ClassVar[str] = "cross-entropy or mse (from y)"
    baseline_doc: ClassVar[str] = "H(y_t | x_t, t) by counting (tokens, classes); else trained per run"
    _given: GivenArrays | None = PrivateAttr(None)

    @property
    def file(self) -> Path | None:
        return Path(self.path) if self.path is not None else None

    @property
    def given(self) -> GivenArrays | None:
        """The arrays given in memory (no `path`), else None."""
        return self._given

    @model_validator(mode="before")
    @classmethod
    def _sizes_from_file(cls, raw: Any, info: ValidationInfo) -> Any:
        """The path resolved (see `resolve_path`); sequence counts default to the sizes of the
        data's splits (recorded in the resolved spec)."""
        if not isinstance(raw, dict):
            return raw
        if isinstance(raw.get("path"), str) and raw["path"]:
            raw = {**raw, "path": resolve_path(raw["path"], info)}
        elif raw.get("path") is not None or _context_data(info) is None:
            return raw
        try:
            splits = cls._splits(raw, _context_data(info))
        except (OSError, ValueError):
            return raw  # reported by the checks after the fields are validated
        return {**{f"{s}_sequences": v.x.shape[0] for s, v in splits.items()}, **raw}

    @classmethod
    def _splits(cls, raw: dict[str, Any], given: GivenArrays | None = None) -> dict[str, Split]:
        def get(key: str) -> Any:
            return raw.get(key, cls.model_fields[key].default)

        cap = get("max_mb")
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < math.inf:
            cap = MAX_MB  # not a number yet (the field's own check says so): the default cap still holds
        if raw.get("path") is not None:
            path = Path(raw["path"])
            arrays = load_arrays(path, cap)
        elif given is not None:
            path, arrays = Path("data"), given.arrays
        else:
            raise DataError("no data: give task.path (an .npz file), or pass the arrays: seqpar.run(spec, data={'x': ..., 'y': ...})")
        parsed, explicit = parse(arrays, get("kind"), get("classes"), get("vocab"))
        return partition(parsed, explicit, get("val_fraction"), get("test_fraction"), get("split_seed") or 0, path)

    @model_validator(mode="after")
    def _file_is_usable(self, info: ValidationInfo):
        if self.path is None:
            given = _context_data(info)
            if given is None:
                raise KeyedError(
                    "path", "required: an .npz file (or pass the arrays in memory: seqpar.run(spec, data={'x': ..., 'y': ...}))"
                )
            self._given = given  # a private attribute: not a field, never recorded; compared by digest
        p = str(self.file) if self.file is not None else "the arrays given in memory"
        try:
            splits = self.splits()
        except FileNotFoundError:
            raise KeyedError("path", f"file not found: {p!r}") from None
        except IsADirectoryError:
            raise KeyedError("path", f"is a directory, expected an .npz file: {p!r}") from None
        except DataError as e:
            raise KeyedError("path" if self.path is not None else "data", f"{p}: {e}") from None
        except OSError as e:
            raise KeyedError("path", f"cannot read {p!r} ({e.strerror or e})") from None
        for s, v in splits.items():
            want, have = getattr(self, f"{s}_sequences"), v.x.shape[0]
            if want > have:
                raise KeyedError(f"{s}_sequences", f"the {s} split of {p} has {have} sequences; cannot use {want}")
        return self

    def splits(self) -> dict[str, Split]:
        return self._splits(self.model_dump(), self._given)

    def arrays(self) -> dict[str, np.ndarray]:
        """The data's arrays as given (the file's, or those passed in memory)."""
        if self._given is not None:
            return self._given.arrays
        assert self.file is not None
        return load_arrays(self.file, self.max_mb)

    def data_files(self) -> dict[str, Path]:
        # Arrays given in memory have no file until `seqpar.run` saves them in the run directory.
        return {"path": self.file} if self.file is not None else {}

    def build(self) -> Task:
        parsed, _ = parse(self.arrays(), self.kind, self.classes, self.vocab)
        base = ClassifiedData if parsed.classification else RegressedData
        return base(self, parsed, self.splits())


def _context_data(info: ValidationInfo | None) -> GivenArrays | None:
    """Arrays passed in memory through the validation context (`seqpar.spec.validate_spec(..., data=...)`)."""
    data = (info.context or {}).get("data") if info is not None else None
    if data is None or isinstance(data, GivenArrays):
        return data
    return GivenArrays(data)


class _FileData:
    """Shared by the classification and regression variants: rows of one split, one-hot tokens."""

    cfg: DatasetConfig

    def _setup(self, cfg: DatasetConfig, parsed: Parsed, splits: dict[str, Split]) -> None:
        self.cfg, self.parsed, self.data = cfg, parsed, splits
        self.input_dim, self.output_dim, self.seq_len = parsed.input_dim, parsed.output_dim, parsed.length

    def make_data(self, key, num_sequences, split="train"):
        s = self.data[split]
        n = s.x.shape[0]
        if num_sequences > n:
            raise ValueError(f"the {split} split has {n} sequences; cannot draw {num_sequences}")
        # All rows in file order, or a key-chosen subset (kept in file order; traceable, so
        # the memory estimate can run it under `jax.eval_shape`).
        rows = jnp.arange(n) if num_sequences == n else jnp.sort(jax.random.permutation(key, n)[:num_sequences])
        x = jnp.asarray(s.x)[rows]
        return Dataset(
            x=jax.nn.one_hot(x, self.input_dim, dtype=jnp.float32) if self.parsed.tokens else x,
            y=jnp.asarray(s.y)[rows],
            mask=jnp.asarray(s.mask)[rows],
        )


class ClassifiedData(_FileData, ClassificationTask):
    baseline_formula = "H(y_t | x_t, t): add-α counts of the training split (α chosen on validation), on the test split"

    def __init__(self, cfg: DatasetConfig, parsed: Parsed, splits: dict[str, Split]):
        self._setup(cfg, parsed, splits)
        if not self.countable:
            self.baseline_formula = "none (inputs not countable): trained memoryless baseline"

    @property
    def countable(self) -> bool:
        return self.parsed.tokens and self.seq_len * self.input_dim * self.output_dim <= MAX_COUNT_CELLS

    def _counts(self, split: str) -> np.ndarray:
        s = self.data[split]
        counts = np.zeros((self.seq_len, self.input_dim, self.output_dim))
        t = np.broadcast_to(np.arange(self.seq_len), s.x.shape)
        np.add.at(counts, (t, s.x, s.y), s.mask)
        return counts

    def cross_entropy(self, alpha: float, split: str) -> float:
        fit = self._counts("train") + alpha
        logp = np.log(fit / fit.sum(axis=-1, keepdims=True))
        ev = self._counts(split)
        return float(-np.sum(ev * logp) / ev.sum())

    @functools.cached_property
    def baseline_loss(self) -> float | None:
        if not self.countable:
            return None
        alpha = min(ALPHAS, key=lambda a: self.cross_entropy(a, "val"))
        loss = self.cross_entropy(alpha, "test")
        return loss if math.isfinite(loss) else None


class RegressedData(_FileData, RegressionTask):
    baseline_formula = "none (regression): trained memoryless baseline"

    def __init__(self, cfg: DatasetConfig, parsed: Parsed, splits: dict[str, Split]):
        self._setup(cfg, parsed, splits)

    @property
    def baseline_loss(self) -> float | None:
        return None
