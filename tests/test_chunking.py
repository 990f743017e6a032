"""Temporal ensembling of overlapping chunks, against hand-computed weighted means."""

import math

import numpy as np
import pytest

from pg_vla.eval.chunking import TemporalEnsemble


def test_first_step_is_the_first_prediction():
    ensemble = TemporalEnsemble(horizon=3, k=0.5)
    chunk = np.array([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])
    np.testing.assert_array_equal(ensemble.step(chunk), [1.0, -1.0])


def test_weighted_mean_of_overlapping_predictions():
    k = 0.5
    ensemble = TemporalEnsemble(horizon=3, k=k)
    # chunk predicted at step s has value 10 * s + j for its j-th action (1-D actions)
    chunks = [np.array([[10.0 * s + j] for j in range(3)]) for s in range(5)]
    got = [float(ensemble.step(c)[0]) for c in chunks]
    w0, w1, w2 = 1.0, math.exp(-k), math.exp(-2 * k)
    # step 1: chunk 0's action 1 (1, the oldest prediction) and chunk 1's action 0 (10)
    assert got[1] == pytest.approx((w0 * 1 + w1 * 10) / (w0 + w1))
    # step 2 and later: three predictions, oldest chunk's action 2 first
    for s in (2, 3, 4):
        expected = (w0 * (10 * (s - 2) + 2) + w1 * (10 * (s - 1) + 1) + w2 * (10 * s)) / (w0 + w1 + w2)
        assert got[s] == pytest.approx(expected)


def test_k_zero_is_the_plain_mean_and_reset_forgets():
    ensemble = TemporalEnsemble(horizon=2, k=0.0)
    ensemble.step(np.array([[0.0], [4.0]]))
    assert ensemble.step(np.array([[2.0], [9.0]]))[0] == pytest.approx(3.0)
    ensemble.reset()
    assert ensemble.step(np.array([[7.0], [1.0]]))[0] == pytest.approx(7.0)


def test_bad_chunks_are_clear_errors():
    ensemble = TemporalEnsemble(horizon=2)
    with pytest.raises(ValueError, match=r"expected a chunk \(2, A\)"):
        ensemble.step(np.zeros((3, 4)))
    ensemble.step(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="chunk shape changed"):
        ensemble.step(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="horizon"):
        TemporalEnsemble(horizon=0)
