"""Sweeps: pure planning of a grid of specs (`plan`) apart from executing it (`execute`)."""

# Every point is validated (and held) before anything runs; a grid past this many points is refused
# unless the caller raises the cap (`--max-points`): 1000 seeds x 1000 learning rates is a typo
# more often than a plan, and would hold a million specs in memory before the first step.
# Here, not in `plan`, so the CLI can show it as a default without importing the schema.
MAX_POINTS = 10_000
