"""`seqpar tune`: every method tuned at the same budget (Optuna); space.py is pure, study.py drives Optuna."""
