"""`train.max_seconds`: stop a method at its training-time budget without a per-step host sync.

The loop dispatches steps asynchronously and learns how much time they took only when it
blocks (at log, eval and checkpoint points). Polling the clock after every step would say
nothing (dispatch returns at once) and blocking after every step would cost the pipeline.
So the budget asks for a few extra sync points: after each one it knows the time per step
of the chunk just finished, predicts how many more steps fit,
`fit = floor((max_seconds - wall_s) / time_per_step)`, and asks the loop to block again
after half of them (at least one); when not even one more step fits, the method stops
there (after its final evaluation, which, like every evaluation, is not on the training
clock). Aiming at half of what is left costs about log2(steps in the budget) extra syncs
per run (a dozen for thousands of steps) and keeps the overshoot to about one step even
when the step time changes under load: a whole-remainder prediction once overshot a 2 s
budget by 1.9 s on a shared CPU. The first prediction comes from a sync after the first
step. No chunk is planned longer than `SYNC_EVERY_S` either: a Newton method's step can
grow tenfold within a run (its iterations follow the recurrence it is training), and a
12 s budget planned on a 30 ms first step once ran to 30.7 s (100 steps of 300 ms). One
sync a second costs nothing measurable. The record's `wall_s` says how far past the
budget a run ended, if at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SYNC_EVERY_S = 1.0  # the longest chunk of steps the budget plans between two looks at the clock


@dataclass
class Budget:
    """The next step at which the loop must block for the budget (None: no budget)."""

    max_seconds: float | None
    check_at: int | None = None

    def start(self, steps_done: int) -> None:
        # The first estimate of the step time needs one finished step.
        self.check_at = steps_done + 1 if self.max_seconds is not None else None

    def due(self, done: int) -> bool:
        return self.check_at is not None and done >= self.check_at

    def spent(self, done: int, wall_s: float, seconds_per_step: float) -> bool:
        """At a sync point: True when the next step would pass the budget; else plan the next check."""
        if self.max_seconds is None:
            return False
        left = self.max_seconds - wall_s
        if seconds_per_step <= 0:  # a clock too coarse to see the chunk: look again after the next step
            self.check_at = done + 1
            return left <= 0
        fit = math.floor(left / seconds_per_step)
        if fit < 1:
            return True
        self.check_at = done + max(1, min(fit // 2, math.floor(SYNC_EVERY_S / seconds_per_step)))
        return False
