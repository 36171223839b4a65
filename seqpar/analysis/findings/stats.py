"""The statistics the findings pages print, with the rules a referee asks for built in.

- Seeds that agree are shown as their mean; seeds that disagree (one used its memory and
  another did not, one beat the memoryless baseline and another did not, or, short of using
  their memory, spread wider than `SPREAD` of their mean) are shown one by one, with "k of n
  below the baseline" and the median: a bimodal outcome is never a mean ± std.
- No slope is fitted through fewer than `MIN_SLOPE_POINTS` points.
- A rank correlation is computed within the group it is about (the caller groups first).
- Numbers are printed with a fixed number of significant digits, so a regeneration prints
  the same text from the same store.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SPREAD = 0.25  # max − min above this fraction of the mean (of ratios to the baseline): the seeds disagree
MIN_SLOPE_POINTS = 4
LEARNED = 0.5  # test loss below half the memoryless baseline: the method used its memory (bold in tables)


def fmt(v: float | None, digits: int = 2) -> str:
    """`digits` significant digits; small and large numbers in scientific notation; — for none."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if v == 0:
        return "0"
    a = abs(float(f"{v:.{max(digits - 1, 0)}e}"))  # rounded first: 0.99999995 reads 1.000, as 1.0 does
    if a < 1e-3 or a >= 1e5:
        return f"{v:.{max(digits - 1, 0)}e}"
    decimals = max(digits - 1 - math.floor(math.log10(a)), 0)
    return f"{v:.{decimals}f}"


def count(v: float | None) -> str:
    """A count (steps, depth, a horizon): whole numbers as they are, a median between two as fmt's 3 digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return str(int(v)) if float(v).is_integer() else fmt(v, 3)


def ratios(values: Sequence[float | None], baseline: Sequence[float | None]) -> list[float | None]:
    return [v / b if v is not None and b not in (None, 0) else None for v, b in zip(values, baseline, strict=True)]


def outcome(ratio: float, learned: float = LEARNED) -> int:
    """0: the memory is used (below `learned` of the baseline), 1: below the baseline, 2: not below it."""
    return 0 if ratio < learned else 1 if ratio < 1.0 else 2


def disagree(values: Sequence[float], learned: float = LEARNED) -> bool:
    """True when seeds' ratios to the baseline land in different outcomes (used their memory, only
    beat the baseline, did not), or, short of using their memory, spread widely."""
    if len(values) < 2:
        return False
    kinds = {outcome(v, learned) for v in values}
    if len(kinds) > 1:
        return True
    if kinds == {0}:  # every seed learned: how far below the baseline is a detail, the mean says it
        return False
    mean = statistics.fmean(values)
    return (max(values) - min(values)) > SPREAD * max(abs(mean), 1e-12)


def seeds_cell(values: Sequence[float | None], digits: int = 2, learned: float = LEARNED) -> str:
    """A table cell for per-seed ratios (test loss ÷ baseline): the mean when the seeds agree, else
    every seed with how many are below the baseline and their median. Bold below `learned`."""
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    missing = len(values) - len(got)
    tail = f" ({missing} diverged)" if missing else ""
    if not disagree(got, learned):
        m = statistics.fmean(got)
        text = fmt(m, digits)
        return (f"**{text}**" if m < learned else text) + tail
    below = sum(v < 1.0 for v in got)
    each = " · ".join(fmt(v, digits) for v in got)
    return f"median {fmt(statistics.median(got), digits)}; {below} of {len(got)} below ({each}){tail}"


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys on xs, or None with fewer than `MIN_SLOPE_POINTS` points."""
    if len(xs) < MIN_SLOPE_POINTS:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else None


def _ranks(v: Sequence[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None for fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A Markdown table; `align`: one of `l`/`r` per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
