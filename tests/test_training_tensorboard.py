"""logging.tensorboard=true: rank 0 writes the scalars of log.jsonl to log_dir/tensorboard. A real in-process run on
tiny Parquet episodes; the event files are read back with tensorboard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_train_config
from pg_vla.training.config import TrainConfig
from pg_vla.training.trainer import Trainer

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


@pytest.fixture(scope="module")
def parquet_data(tiny_episodes: Path) -> Path:
    return tiny_episodes


def _config(data: Path, paligemma: Path, log_dir: Path, **overrides) -> TrainConfig:
    return tiny_train_config(
        data,
        paligemma,
        log_dir,
        **{
            "save_every": 2,
            "logging": {"tensorboard": True},
            "validation": {"every": 2, "batches": 1, "thresholds": [0.5]},
            **overrides,
        },
    )


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(log_dir / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _logged(log_dir: Path) -> dict[str, dict[int, float]]:
    by_key: dict[str, dict[int, float]] = {}
    for line in (log_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "event" in record:
            continue
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                by_key.setdefault(key, {})[record["step"]] = value
    return by_key


def _assert_same(scalars: dict, logged: dict) -> None:
    assert scalars.keys() == logged.keys()
    for key in logged:
        assert scalars[key].keys() == logged[key].keys(), key
        for step, value in logged[key].items():  # event files store float32: 2^-24 relative rounding
            assert scalars[key][step] == pytest.approx(value, rel=2**-23, abs=1e-30), (key, step)


def test_tensorboard_scalars_equal_the_log(parquet_data, tiny_checkpoint_dir, tmp_path) -> None:
    log_dir = tmp_path / "run"
    Trainer(_config(parquet_data, tiny_checkpoint_dir, log_dir)).run()
    logged, scalars = _logged(log_dir), _scalars(log_dir)
    assert {"loss", "grad_norm", "lr", "samples_per_s", "val_loss"} <= logged.keys()
    assert sorted(logged["loss"]) == [1, 2, 3, 4] and sorted(logged["val_loss"]) == [2, 4]
    _assert_same(scalars, logged)


def test_resumed_run_replaces_the_events_after_its_checkpoint(parquet_data, tiny_checkpoint_dir, tmp_path) -> None:
    """Steps 3..4 of a first run are trained again after resuming from step 2: tensorboard keeps the new
    values only (as log.jsonl does), and a run without tensorboard writes no event files."""
    log_dir = tmp_path / "run"
    Trainer(_config(parquet_data, tiny_checkpoint_dir, log_dir, n_updates=3)).run()
    (log_dir / "checkpoints" / "step_000003").rename(log_dir / "step_000003_dropped")
    (log_dir / "checkpoints" / "latest").write_text("step_000002\n")
    Trainer(
        _config(
            parquet_data,
            tiny_checkpoint_dir,
            log_dir,
            optimizer={"name": "adamw", "vlm_lr": 2e-3, "action_expert_lr": 2e-3},
        )
    ).run()
    logged, scalars = _logged(log_dir), _scalars(log_dir)
    assert sorted(logged["loss"]) == [1, 2, 3, 4]
    _assert_same(scalars, logged)
    Trainer(
        _config(parquet_data, tiny_checkpoint_dir, tmp_path / "off", logging={"tensorboard": False}, n_updates=1)
    ).run()
    assert not (tmp_path / "off" / "tensorboard").exists()
