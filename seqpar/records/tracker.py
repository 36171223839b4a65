"""Where the training loop's metric lines go: a small tracker interface with swappable backends.

The loop calls one `log(line)` per log/eval point and nothing else (levanter's tracker
idea): `metrics.jsonl` (`MetricsLog`, always), TensorBoard event files written as the run
goes (`seqpar.analysis.tensorboard.LiveWriter`, with `--tensorboard`), a study's pruning
callback (`seqpar.tune.study`), or nothing (`NoOpTracker`, for tests). Every backend sees
the same lines, so a crash leaves each with the same points so far.
"""

from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class NoOpTracker:
    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Trackers:
    """Fan one line out to several backends, in order (the JSON-lines log first: it is the record)."""

    def __init__(self, *backends: Tracker):
        self.backends = list(backends)

    def write(self, record: dict[str, Any]) -> None:
        for b in self.backends:
            b.write(record)

    def close(self) -> None:
        for b in self.backends:
            b.close()
