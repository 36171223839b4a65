"""`seqpar tune`: every method tuned at the same budget (Optuna); space.py is pure, study.py drives Optuna."""

# A study of more trials than this (all methods together) is refused unless the caller raises
# the cap (`--max-trials`), as sweeps cap their points: `trials: 1000000000000` is a typo, and
# would run until killed. Here, not in `space`, so the CLI shows it without importing Optuna.
MAX_TRIALS = 10_000
