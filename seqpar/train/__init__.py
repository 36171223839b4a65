"""Training: the one loop every method runs in, the runner that owns a run directory's lifetime,
checkpoints, device sharding and the memory estimate."""
