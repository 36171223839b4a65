"""The one model every method trains (cells, readout) and the one rollout evaluator."""
