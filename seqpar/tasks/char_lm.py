"""Character-level language modelling on a plain-text file.

The default text is Shakespeare's Hamlet, shipped in `seqpar/data/` (its source is
in the README there); `path:` takes the user's own UTF-8 file (a relative path is
resolved against the spec file's directory and recorded absolute, as `dataset`'s is).
The vocabulary is every character of the file, one-hot in and a class each out.

The text is cut in three consecutive parts: training, validation (`val_fraction`)
and test (the final `test_fraction`); `make_data(split=...)` draws random windows
of `length + 1` characters from one part only, so held-out rollouts never see
training text and choices made on validation never see test text. (Adding the
validation part shrank the training part from 90% to 80% of the text at the
defaults, so char_lm's training windows differ from those of earlier versions;
the test part is unchanged.)
Input at t is character t of the window, target is character t + 1; every step
is scored.

Memoryless baseline: a predictor without memory still sees the current character, so
the baseline is the conditional entropy of the next character given the current one
(the unigram entropy, 3.35 nats on Hamlet, was ~0.9 nats too generous). It is
estimated as the cross-entropy, on the test part, of the add-α bigram model counted
on the training part, with α chosen on the validation part from a small grid.
"""

from __future__ import annotations

import functools
import stat
from importlib import resources
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from seqpar.config import KeyedError
from seqpar.tasks.base import ClassificationTask, Dataset, TaskConfig, resolve_path
from seqpar.tasks.registry import TASKS

SHIPPED_TEXT = "hamlet.txt"
BIGRAM_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)  # add-α smoothing of the baseline's bigram, chosen on validation
# The whole text is held in memory several times over (the string, its code points, the ids),
# so a file is refused above this size; a device such as /dev/zero would never end.
MAX_TEXT_BYTES = 16 << 20


class TextFileError(ValueError):
    """A `path:` that is not a regular file of at most `MAX_TEXT_BYTES`."""


def shipped_text_path() -> Path:
    return Path(str(resources.files("seqpar") / "data" / SHIPPED_TEXT))


@functools.lru_cache(maxsize=4)
def _read_text(path: str, mtime_ns: int) -> str:
    del mtime_ns  # part of the cache key only: an edited file is read again
    with open(path, "rb") as f:
        data = f.read(MAX_TEXT_BYTES + 1)  # bounded even if the file grows after the size check
    if len(data) > MAX_TEXT_BYTES:
        raise TextFileError(f"larger than {MAX_TEXT_BYTES >> 20} MiB")
    return data.decode("utf-8")


def read_text(path: Path) -> str:
    """The file's text; OSError, UnicodeDecodeError, or TextFileError (not a regular file, too large)."""
    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise TextFileError("not a regular file (a device, pipe or socket)")
    if st.st_size > MAX_TEXT_BYTES:
        raise TextFileError(f"{st.st_size / 2**20:.0f} MiB, larger than the {MAX_TEXT_BYTES >> 20} MiB a text may have")
    return _read_text(str(path), st.st_mtime_ns)


@TASKS.register("char_lm")
class CharLMConfig(TaskConfig):
    """Predict the next character of a text (default: Hamlet, shipped)."""

    type: Literal["char_lm"] = "char_lm"
    path: str | None = Field(
        None,
        min_length=1,
        description="UTF-8 text file, a regular file of at most 16 MiB (default: the shipped Hamlet, about 178 KB); "
        "a relative path is resolved against the spec file's directory and recorded absolute",
    )
    length: int = Field(128, gt=0, description="characters per sequence")
    test_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="final part of the text held out for the test set")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, allow_inf_nan=False, description="part of the text just before the test part, held out for validation"
    )

    @field_validator("path")
    @classmethod
    def _resolved(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(v, info) if v is not None else None

    @property
    def text_path(self) -> Path:
        return Path(self.path).expanduser() if self.path is not None else shipped_text_path()

    @model_validator(mode="after")
    def _text_fits(self):
        key = "path" if self.path is not None else "length"
        p = self.text_path
        try:
            text = read_text(p)
        except FileNotFoundError:
            raise KeyedError("path", f"file not found: {str(p)!r}") from None
        except IsADirectoryError:
            raise KeyedError("path", f"is a directory, expected a text file: {str(p)!r}") from None
        except TextFileError as e:
            raise KeyedError("path", f"{str(p)!r}: {e}") from None
        except UnicodeDecodeError as e:
            raise KeyedError("path", f"not UTF-8 text: {str(p)!r} ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise KeyedError("path", f"cannot read {str(p)!r} ({e.strerror or e})") from None
        if self.val_fraction + self.test_fraction >= 1:
            raise KeyedError(
                "val_fraction", f"val_fraction + test_fraction must be below 1 (got {self.val_fraction} + {self.test_fraction})"
            )
        train_chars, val_chars, test_chars = split_sizes(len(text), self.test_fraction, self.val_fraction)
        need = self.length + 1
        if min(train_chars, val_chars, test_chars) < need:
            raise KeyedError(
                key,
                f"each part of the text must hold a window of length + 1 = {need} characters, but {str(p)!r} has "
                f"{len(text)} characters: {train_chars} for training, {val_chars} for validation, {test_chars} for test "
                f"(val_fraction={self.val_fraction}, test_fraction={self.test_fraction})",
            )
        return self

    def data_files(self) -> dict[str, Path]:
        return {"path": self.text_path}

    def build(self) -> CharLM:
        return CharLM(self)


def split_sizes(num_chars: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """Characters in the training, validation and test parts (in that order in the text)."""
    test = int(round(num_chars * test_fraction))
    val = int(round(num_chars * val_fraction))
    return num_chars - val - test, val, test


class CharLM(ClassificationTask):
    baseline_formula = "H(next char | current char): add-α bigram of the training part (α chosen on validation), on the test part"

    def __init__(self, cfg: CharLMConfig):
        self.cfg = cfg
        text = read_text(cfg.text_path)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        chars, ids = np.unique(codes, return_inverse=True)
        self.vocab = "".join(map(chr, chars))
        self.ids = ids.astype(np.int32)
        train, val, _ = split_sizes(len(self.ids), cfg.test_fraction, cfg.val_fraction)
        self.num_train_chars = train
        # [start, end) of each part in `ids`
        self.parts = {"train": (0, train), "val": (train, train + val), "test": (train + val, len(self.ids))}
        self.input_dim = self.output_dim = len(self.vocab)
        self.seq_len = cfg.length

    def bigram_counts(self, split: str) -> np.ndarray:
        """`(V, V)` counts of (current, next) character pairs within one part of the text."""
        lo, hi = self.parts[split]
        ids = self.ids[lo:hi]
        counts = np.zeros((self.output_dim, self.output_dim))
        np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
        return counts

    def bigram_cross_entropy(self, alpha: float, split: str) -> float:
        """Mean −ln p(next | current) over a part of the text, p the add-`alpha` bigram of the training part."""
        fit = self.bigram_counts("train") + alpha
        logp = np.log(fit / fit.sum(axis=1, keepdims=True))
        pairs = self.bigram_counts(split)
        return float(-np.sum(pairs * logp) / pairs.sum())

    @functools.cached_property
    def baseline_loss(self) -> float:
        alpha = min(BIGRAM_ALPHAS, key=lambda a: self.bigram_cross_entropy(a, "val"))
        return self.bigram_cross_entropy(alpha, "test")

    def make_data(self, key, num_sequences, split="train"):
        if split not in self.parts:
            raise ValueError(f"split must be one of {', '.join(self.parts)} (got {split!r})")
        lo, hi = self.parts[split]
        window = self.cfg.length + 1
        starts = jax.random.randint(key, (num_sequences,), lo, hi - window + 1)
        tokens = jnp.asarray(self.ids)[starts[:, None] + jnp.arange(window)]
        return Dataset(
            x=jax.nn.one_hot(tokens[:, :-1], self.input_dim, dtype=jnp.float32),
            y=tokens[:, 1:],
            mask=jnp.ones((num_sequences, self.cfg.length), jnp.float32),
        )
