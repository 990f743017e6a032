"""A step whose loss or gradients are NaN/inf is skipped (weights, optimizer state untouched, logged), and
`max_nonfinite_steps` of them in a row stop the run with the last checkpoint intact. The trainer is the real
one on tiny Parquet data; the fault is injected by poisoning the actions of chosen steps' batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_train_config
from pg_vla.training.config import TrainConfig
from pg_vla.training.trainer import NonFiniteTrainingError, Trainer


class PoisonedTrainer(Trainer):
    """Trains normally except that the actions of the steps in `poisoned` are NaN."""

    poisoned: set[int] = set()

    def _optimizer_step(self, batches, step):
        self._step = step
        return super()._optimizer_step(batches, step)

    def _inputs(self, batch):
        inputs = super()._inputs(batch)
        if self._step in self.poisoned:
            inputs["actions"] = torch.full_like(inputs["actions"], float("nan"))
        return inputs


@pytest.fixture(scope="module")
def parquet_data(tiny_episodes: Path) -> Path:
    return tiny_episodes


def _config(parquet_data: Path, paligemma: Path, log_dir: Path, **overrides) -> TrainConfig:
    return tiny_train_config(parquet_data, paligemma, log_dir, **overrides)


def _records(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "log.jsonl").read_text().splitlines()]  # strict JSON


def _weights(log_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(log_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_a_non_finite_step_is_skipped_and_logged(parquet_data, tiny_checkpoint_dir, tmp_path) -> None:
    PoisonedTrainer.poisoned = {2}
    PoisonedTrainer(_config(parquet_data, tiny_checkpoint_dir, tmp_path / "run")).run()
    records = _records(tmp_path / "run")
    skipped = [r for r in records if r.get("event") == "skipped_non_finite"]
    assert [(r["step"], r["loss"], r["consecutive"]) for r in skipped] == [(2, None, 1)]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    assert losses[2] is None and all(math.isfinite(losses[s]) for s in (1, 3, 4))
    w1, w2, w3 = (_weights(tmp_path / "run", s) for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 changed nothing
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # step 3 trained
    assert all(torch.isfinite(t).all() for s in (1, 2, 3, 4) for t in _weights(tmp_path / "run", s).values())


def test_consecutive_non_finite_steps_stop_the_run(parquet_data, tiny_checkpoint_dir, tmp_path) -> None:
    PoisonedTrainer.poisoned = {2, 3, 4}
    trainer = PoisonedTrainer(_config(parquet_data, tiny_checkpoint_dir, tmp_path / "run", max_nonfinite_steps=2))
    with pytest.raises(
        NonFiniteTrainingError,
        match=r"at 2 steps in a row, 2..3: training stopped "
        r"\(max_nonfinite_steps=2\).*last checkpoint \(step_000002\)",
    ):
        trainer.run()
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if r.get("event") == "skipped_non_finite"] == [2, 3]
    assert not (tmp_path / "run" / "checkpoints" / "step_000003").exists()
    w1, w2 = _weights(tmp_path / "run", 1), _weights(tmp_path / "run", 2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
