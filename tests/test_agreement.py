"""The agreement horizon: how many leading steps of the embedding table match the rollout."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.methods.agreement import agreement_metrics, profile_positions


def test_horizon_is_the_first_position_that_disagrees():
    rng = np.random.default_rng(0)
    rollout = rng.normal(size=(3, 10, 4)).astype(np.float32)
    table = rollout.copy()
    table[:, 6:, 0] += 0.5  # steps 7.. (1-based) are off by 0.5 in one coordinate
    table[0, 2, 1] += 0.2  # step 3 of one sequence is off by 0.2: a mean of 0.067 over three, still agreeing
    out = {k: float(v) for k, v in agreement_metrics(jnp.asarray(table), jnp.asarray(rollout), threshold=0.1).items()}
    assert out["agreement_horizon"] == 6 and out["agreement_horizon_frac"] == pytest.approx(0.6)
    assert out["table_rollout_dist_at_1"] == pytest.approx(0.0, abs=1e-6)
    assert out["table_rollout_dist_at_4"] == pytest.approx(0.0, abs=1e-6)
    assert out["table_rollout_dist_at_8"] == pytest.approx(0.5, rel=1e-5)
    assert out["table_rollout_dist_at_10"] == pytest.approx(0.5, rel=1e-5)
    assert set(out) == {"agreement_horizon", "agreement_horizon_frac", *(f"table_rollout_dist_at_{t}" for t in (1, 2, 4, 8, 10))}


def test_horizon_ends():
    x = jnp.zeros((2, 5, 3))
    assert float(agreement_metrics(x, x)["agreement_horizon"]) == 5  # all agree
    assert float(agreement_metrics(x + 1.0, x)["agreement_horizon"]) == 0  # not even the first step


def test_profile_positions():
    assert profile_positions(1) == [1]
    assert profile_positions(8) == [1, 2, 4, 8]
    assert profile_positions(4096)[-3:] == [1024, 2048, 4096] and len(profile_positions(4096)) == 13
