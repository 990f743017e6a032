"""Normalization statistics files and the normalize / unnormalize pair, against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics, Normalizer, default_action_mask

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("name, proprio_dim, transitions", [("bridge", 7, 2_195_527), ("fractal", 8, 3_786_400)])
def test_published_statistics_load(name, proprio_dim, transitions):
    stats = DatasetStatistics.load(CONFIG / f"{name}_statistics.json")
    assert stats.action.dim == 7 and stats.proprio.dim == proprio_dim
    assert stats.num_transitions == transitions
    assert np.all(stats.action.p01 <= stats.action.p99)


def _stats() -> ArrayStatistics:
    return ArrayStatistics(mean=np.array([0.0, 1.0, 0.5]), std=np.array([2.0, 0.5, 1.0]),
                           min=np.array([-5.0, 0.0, 0.0]), max=np.array([5.0, 2.0, 1.0]),
                           p01=np.array([-2.0, 0.5, 3.0]), p99=np.array([2.0, 1.5, 3.0]))


def test_bounds_normalization_by_hand():
    norm = Normalizer(_stats(), "bounds")
    x = np.array([[1.0, 0.75, 7.0], [-4.0, 2.0, 3.0]])
    # dim 0: 2 (x + 2) / 4 - 1; dim 1: 2 (x - 0.5) / 1 - 1; dim 2: p01 == p99 -> 0
    expected = np.array([[0.5, -0.5, 0.0], [-1.0, 1.0, 0.0]])  # -4 and 2.0 clip to -1 and 1
    np.testing.assert_allclose(norm.normalize(x), expected)
    np.testing.assert_allclose(norm.unnormalize(expected[:1]), [[1.0, 0.75, 3.0]])
    torch.testing.assert_close(norm.normalize(torch.tensor(x)), torch.tensor(expected))


def test_gaussian_and_mask():
    norm = Normalizer(_stats(), "gaussian", mask=[True, True, False])
    x = np.array([[2.0, 2.0, 0.25]])
    np.testing.assert_allclose(norm.normalize(x), [[1.0, 2.0, 0.25]])  # masked dim stays raw
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x)
    assert default_action_mask(7) == [True] * 6 + [False]
    with pytest.raises(ValueError, match="last dimension 3"):
        norm.normalize(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown normalization"):
        Normalizer(_stats(), "minmax")


def test_bad_statistics_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        DatasetStatistics.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        DatasetStatistics.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"action": {}, "proprio": {}, "num_transitions": 1, "num_trajectories": 1}')
    with pytest.raises(ValueError, match="lack"):
        DatasetStatistics.load(tmp_path / "partial.json")
