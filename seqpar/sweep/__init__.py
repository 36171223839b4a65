"""Sweeps: pure planning of a grid of specs (`plan`) apart from executing it (`execute`)."""
