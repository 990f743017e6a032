"""Normalization statistics files and the normalize / unnormalize pair of every mode, against hand-computed
float64 values (openpi's formulas for mean_std and quantile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics, Normalizer, default_action_mask
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.rlds.config import RLDSConfig

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("name, proprio_dim, transitions", [("bridge", 7, 2_195_527), ("fractal", 8, 3_786_400)])
def test_published_statistics_load(name, proprio_dim, transitions):
    stats = DatasetStatistics.load(CONFIG / f"{name}_statistics.json")
    assert stats.action.dim == 7 and stats.proprio.dim == proprio_dim
    assert stats.num_transitions == transitions
    assert np.all(stats.action.p01 <= stats.action.p99)


def _stats() -> ArrayStatistics:
    return ArrayStatistics(
        mean=np.array([0.0, 1.0, 0.5]),
        std=np.array([2.0, 0.5, 1.0]),
        min=np.array([-5.0, 0.0, 0.0]),
        max=np.array([5.0, 2.0, 1.0]),
        p01=np.array([-2.0, 0.5, 3.0]),
        p99=np.array([2.0, 1.5, 3.0]),
    )


def test_bounds_normalization_by_hand():
    norm = Normalizer(_stats(), "bounds")
    x = np.array([[1.0, 0.75, 7.0], [-4.0, 2.0, 3.0]])
    # dim 0: 2 (x + 2) / 4 - 1; dim 1: 2 (x - 0.5) / 1 - 1; dim 2: p01 == p99 -> 0
    expected = np.array([[0.5, -0.5, 0.0], [-1.0, 1.0, 0.0]])  # -4 and 2.0 clip to -1 and 1
    np.testing.assert_allclose(norm.normalize(x), expected)
    np.testing.assert_allclose(norm.unnormalize(expected[:1]), [[1.0, 0.75, 3.0]])
    torch.testing.assert_close(norm.normalize(torch.tensor(x)), torch.tensor(expected))


def test_mask_shape_errors_and_unknown_modes():
    norm = Normalizer(_stats(), "mean_std", mask=[True, True, False])
    x = np.array([[2.0, 2.0, 0.25]])
    np.testing.assert_allclose(norm.normalize(x), [[2.0 / (2.0 + 1e-6), 1.0 / (0.5 + 1e-6), 0.25]], rtol=1e-15)
    assert default_action_mask(7) == [True] * 6 + [False]
    with pytest.raises(ValueError, match="last dimension 3"):
        norm.normalize(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="mask has 2 entries for 3 dimensions"):
        Normalizer(_stats(), "bounds", mask=[True, False])
    message = "unknown normalization 'minmax'; accepted: bounds, mean_std, quantile, gaussian"
    with pytest.raises(ValueError, match=message):
        Normalizer(_stats(), "minmax")
    for config in (RLDSConfig, ParquetConfig):
        first = "data_path" if config is RLDSConfig else "paths"
        with pytest.raises(ValueError, match=message):
            config(**{first: "x"}, normalization="minmax")
        assert config(**{first: "x"}, normalization="quantile").normalization == "quantile"


# Four dimensions: two ordinary, one constant (p01 == p99, std 0), one masked (the gripper).
MASK = [True, True, True, False]
STATS4 = ArrayStatistics(
    mean=np.array([0.0, 1.0, 3.0, 0.5]),
    std=np.array([2.0, 0.5, 0.0, 0.5]),
    min=np.array([-5.0, 0.0, 3.0, 0.0]),
    max=np.array([5.0, 2.0, 3.0, 1.0]),
    p01=np.array([-2.0, 0.5, 3.0, 0.0]),
    p99=np.array([2.0, 1.5, 3.0, 1.0]),
)
X4 = np.array(
    [
        [1.0, 0.75, 3.0, 1.0],  # inside the p01..p99 range, the constant dimension at its value
        [-4.0, 2.0, 7.0, 0.0],
    ]
)  # outside it (bounds clips there), the constant dimension off its value
# By hand, in float64, with openpi's formulas; the last column is the masked gripper, left as it is.
BY_HAND = {
    "bounds": np.array(
        [[2 * 3 / 4 - 1, 2 * 0.25 / 1 - 1, 0.0, 1.0], [-1.0, 1.0, 0.0, 0.0]]
    ),  # 2 (-2) / 4 - 1 = -2 and 2 (1.5) - 1 = 2 clip; constant -> 0
    "mean_std": np.array(
        [[1 / (2 + 1e-6), -0.25 / (0.5 + 1e-6), 0 / 1e-6, 1.0], [-4 / (2 + 1e-6), 1 / (0.5 + 1e-6), 4 / 1e-6, 0.0]]
    ),
    "quantile": np.array(
        [
            [2 * 3 / (4 + 1e-6) - 1, 2 * 0.25 / (1 + 1e-6) - 1, 2 * 0 / 1e-6 - 1, 1.0],
            [2 * -2 / (4 + 1e-6) - 1, 2 * 1.5 / (1 + 1e-6) - 1, 2 * 4 / 1e-6 - 1, 0.0],
        ]
    ),
}


@pytest.mark.parametrize("mode", ["bounds", "mean_std", "quantile", "gaussian"])
def test_modes_against_hand_computed_values_and_round_trips(mode):
    norm = Normalizer(STATS4, mode, MASK)
    expected = BY_HAND["mean_std" if mode == "gaussian" else mode]
    y = norm.normalize(X4)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # exact inverse: every value back where the mode does not clip; bounds returns the clipped value
    back = norm.unnormalize(y)
    if mode == "bounds":
        np.testing.assert_allclose(back, [[1.0, 0.75, 3.0, 1.0], [-2.0, 1.5, 3.0, 0.0]], rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(back, X4, rtol=1e-12, atol=1e-9)
    # and the other way round, from normalized values
    z = np.array([[0.3, -0.7, 0.0, 1.0], [1.7, -2.5, 0.5, 0.0]])
    mean, std, p01, p99 = STATS4.mean, STATS4.std, STATS4.p01, STATS4.p99
    if mode == "bounds":
        inverse = (np.clip(z, -1, 1) + 1) / 2 * (p99 - p01) + p01  # the constant dimension -> 3.0
    elif mode == "quantile":
        inverse = (z + 1) / 2 * (p99 - p01 + 1e-6) + p01
    else:
        inverse = z * (std + 1e-6) + mean
    inverse[:, 3] = z[:, 3]
    np.testing.assert_allclose(norm.unnormalize(z), inverse, rtol=1e-12, atol=1e-12)
    if mode != "bounds":
        np.testing.assert_allclose(norm.normalize(norm.unnormalize(z)), z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["bounds", "mean_std", "quantile"])
def test_torch_and_float32_follow_the_input_dtype(mode):
    norm = Normalizer(STATS4, mode, MASK)
    expected = BY_HAND[mode]
    torch.testing.assert_close(norm.normalize(torch.tensor(X4)), torch.tensor(expected), rtol=1e-12, atol=1e-12)
    y32 = norm.normalize(torch.tensor(X4, dtype=torch.float32))
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), torch.tensor(expected), rtol=1e-6, atol=2e-6 * np.abs(expected).max())
    n32 = norm.normalize(X4.astype(np.float32))
    assert n32.dtype == np.float32
    np.testing.assert_array_equal(n32, y32.numpy())  # numpy and torch: the same float32 arithmetic
    assert Normalizer(STATS4, "gaussian", MASK).mode == "mean_std"


@pytest.mark.parametrize("mode", ["bounds", "mean_std", "quantile"])
def test_tensorflow_twin_equals_the_numpy_float32_path(mode):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from pg_vla.data.rlds.trajectory import normalize_tf

    norm = Normalizer(STATS4, mode, MASK)
    x = np.concatenate([X4, np.random.default_rng(0).normal(0, 3, (64, 4))]).astype(np.float32)
    np.testing.assert_array_equal(normalize_tf(tf.constant(x), norm).numpy(), norm.normalize(x))


def test_bad_statistics_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        DatasetStatistics.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        DatasetStatistics.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"action": {}, "proprio": {}, "num_transitions": 1, "num_trajectories": 1}')
    with pytest.raises(ValueError, match="lack"):
        DatasetStatistics.load(tmp_path / "partial.json")


def test_save_uses_a_temporary_file_unique_across_hosts(tmp_path, monkeypatch):
    """Writers on two hosts with the same pid (a shared folder) never share a temporary file: each is
    created exclusively (mkstemp, O_EXCL) under a name holding its host, pid and a random part, then
    renamed into place; nothing is left behind, also when writing fails."""
    import os
    import socket
    import tempfile

    stats = ArrayStatistics.from_values(np.arange(12.0).reshape(6, 2))
    data = DatasetStatistics(action=stats, proprio=stats, num_transitions=6, num_trajectories=1)
    created, renamed = [], []
    mkstemp, replace = tempfile.mkstemp, os.replace

    def recording_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        created.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((src, dst)), replace(src, dst)))
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    target = tmp_path / "shared" / "bridge_statistics.json"
    for host in ("node-a", "node-b", "node-b"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        assert data.save(target) == target
    names = [Path(n).name for n in created]
    assert len(set(names)) == 3, names  # the same host and pid twice: still two files
    for name, host in zip(names, ("node-a", "node-b", "node-b")):
        assert name.startswith(f".bridge_statistics.json.{host}-4242-") and name.endswith(".tmp")
    assert [(Path(s).name, Path(d)) for s, d in renamed] == [(n, target) for n in names]
    assert sorted(p.name for p in target.parent.iterdir()) == ["bridge_statistics.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert DatasetStatistics.load(target).to_dict() == data.to_dict()

    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        data.save(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["bridge_statistics.json"]
