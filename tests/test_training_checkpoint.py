"""Training checkpoints: round trip, crash safety, integrity checks, pruning, resume resolution."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics
from pg_vla.model.checkpoint import load_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training import checkpoint as ckpt
from pg_vla.training.checkpoint import (
    find_latest_checkpoint,
    load_training_state,
    resolve_resume,
    save_training_checkpoint,
    verify_checkpoint,
)


def _model(seed: int = 0) -> PiZero:
    torch.manual_seed(seed)
    return PiZero(PiZeroConfig.preset("tiny"))


def _training(model: PiZero):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return optimizer, scheduler


def _train_steps(model: PiZero, optimizer, scheduler, n: int = 2) -> None:
    gen = torch.Generator().manual_seed(123)
    for _ in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        scheduler.step()


def _stats(dim: int = 3) -> DatasetStatistics:
    values = np.random.default_rng(0).normal(size=(50, dim))
    return DatasetStatistics(action=ArrayStatistics.from_values(values), proprio=ArrayStatistics.from_values(values),
                             num_transitions=50, num_trajectories=2)


class _Averaging:
    def __init__(self, model: PiZero):
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.num_updates = 0

    def state_dict(self):
        return {"shadow": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state):
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.num_updates = state["num_updates"]


def _save(ckpt_dir: Path, step: int, model: PiZero, **kwargs) -> Path:
    kwargs.setdefault("config", {"run": "test", "step": step})
    return save_training_checkpoint(ckpt_dir, step, model, **kwargs)


def test_round_trip_restores_everything(tmp_path):
    model = _model()
    optimizer, scheduler = _training(model)
    _train_steps(model, optimizer, scheduler)
    averaging = _Averaging(model)
    averaging.shadow = {k: v * 0.5 for k, v in averaging.shadow.items()}
    averaging.num_updates = 7
    tok_src = tmp_path / "tok"
    tok_src.mkdir()
    (tok_src / "tokenizer.json").write_text('{"fake": true}')
    stats = _stats()
    stats_file = _stats(2).save(tmp_path / "other.json")
    config = {"model": {"preset": "tiny"}, "lr": 1e-3, "out": tmp_path}

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    path = save_training_checkpoint(
        tmp_path / "run", 100, model, optimizer=optimizer, schedulers=[scheduler], averaging=averaging,
        config=config, statistics={"bridge": stats, "other": stats_file}, tokenizer=tok_src,
        data_state={"epoch": 1, "offset": 42}, inference_state_dict=averaging.shadow)
    expected_draws = (torch.rand(4), np.random.rand(4), random.random())

    assert path == tmp_path / "run" / "step_000100"
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000100"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latest", "step_000100"]
    manifest = verify_checkpoint(path)
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "statistics/bridge.json",
                                      "statistics/other.json", "tokenizer/tokenizer.json", "training_state.pt"}
    assert DatasetStatistics.load(path / "statistics" / "bridge.json").to_dict() == stats.to_dict()
    assert json.loads((path / "config.json").read_text())["out"] == str(tmp_path)

    # Inference without the training code: model.safetensors holds the averaged weights.
    inference = load_model(path / "model.safetensors")
    assert inference.config == model.config
    for key, value in inference.state_dict().items():
        assert torch.equal(value, averaging.shadow[key]), key

    # Perturb everything, then restore into fresh objects.
    torch.rand(10), np.random.rand(10), random.random()
    fresh = _model(seed=1)
    fresh_opt, fresh_sched = _training(fresh)
    fresh_avg = _Averaging(fresh)
    info = load_training_state(path, fresh, optimizer=fresh_opt, schedulers=[fresh_sched], averaging=fresh_avg)

    assert info["step"] == 100
    assert info["data_state"] == {"epoch": 1, "offset": 42}
    assert info["config"]["lr"] == 1e-3
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name  # raw training weights, not the averaged ones
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert fresh_sched.last_epoch == scheduler.last_epoch
    original, restored = optimizer.state_dict(), fresh_opt.state_dict()
    assert original["param_groups"] == restored["param_groups"]
    for key, state in original["state"].items():
        for field, value in state.items():
            assert torch.equal(value, restored["state"][key][field]), (key, field)
    assert fresh_avg.num_updates == 7
    assert all(torch.equal(fresh_avg.shadow[k], v) for k, v in averaging.shadow.items())
    draws = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(draws[0], expected_draws[0])
    assert np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]


def test_without_averaging_weights_are_stored_once(tmp_path):
    model = _model()
    tokenizer_calls = []

    class FakeTokenizer:
        def save_pretrained(self, folder):
            tokenizer_calls.append(folder)
            Path(folder, "tokenizer_config.json").write_text("{}")

    path = _save(tmp_path, 3, model, tokenizer=FakeTokenizer())
    assert torch.load(path / "training_state.pt", weights_only=False)["model"] is None
    assert (path / "tokenizer" / "tokenizer_config.json").is_file() and len(tokenizer_calls) == 1
    fresh = _model(seed=2)
    assert load_training_state(path, fresh, restore_rng=False)["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_load_into_mismatched_model_is_a_clear_error(tmp_path):
    path = _save(tmp_path, 1, _model())
    other = PiZero(PiZeroConfig.preset("tiny", action_dim=3))
    with pytest.raises(CheckpointError, match="shape"):
        load_training_state(path, other, restore_rng=False)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    first = _save(tmp_path, 1, model)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert find_latest_checkpoint(tmp_path) == first


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training import checkpoint as ckpt

    ckpt_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
    real = ckpt._write_manifest

    def stall(folder, step):
        marker.write_text(str(folder))
        time.sleep(120)  # killed here: every file but the manifest is written
        real(folder, step)

    ckpt._write_manifest = stall
    model = PiZero(PiZeroConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    ckpt.save_training_checkpoint(ckpt_dir, 2, model, optimizer=opt, config={"child": True},
                                  data_state={"blob": bytes(4_000_000)})
""")


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "run"
    model = _model()
    optimizer, scheduler = _training(model)
    _train_steps(model, optimizer, scheduler, n=1)
    first = _save(ckpt_dir, 1, model, optimizer=optimizer, schedulers=scheduler)

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"child exited early: {proc.stdout.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child never reached the manifest write")
            time.sleep(0.05)
        tmp_folder = Path(marker.read_text())
        assert tmp_folder.parent == ckpt_dir and tmp_folder.name.startswith(".tmp-step_000002-")
        assert (tmp_folder / "training_state.pt").stat().st_size > 4_000_000
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    assert tmp_folder.exists()  # the leftover is there, but readers ignore it
    assert not (ckpt_dir / "step_000002").exists()
    assert (ckpt_dir / "latest").read_text().strip() == "step_000001"
    assert find_latest_checkpoint(ckpt_dir) == first
    assert resolve_resume(None, ckpt_dir, "auto") == first
    fresh = _model(seed=3)
    fresh_opt, fresh_sched = _training(fresh)
    assert load_training_state(first, fresh, optimizer=fresh_opt, schedulers=[fresh_sched])["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))

    # The next save cleans the leftover.
    _save(ckpt_dir, 3, model)
    assert not tmp_folder.exists()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000001", "step_000003"]


def test_truncated_model_is_rejected_and_latest_falls_back(tmp_path, caplog):
    model = _model()
    first = _save(tmp_path, 1, model)
    second = _save(tmp_path, 2, model)
    weights = second / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match=r"step_000002.*model\.safetensors.*truncated or corrupted"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_training_state(second, _model(), restore_rng=False)
    with caplog.at_level("WARNING", logger="pg_vla.training.checkpoint"):
        assert find_latest_checkpoint(tmp_path) == first
    assert "step_000002" in caplog.text
    assert find_latest_checkpoint(tmp_path, verify=False) == second
    with pytest.raises(CheckpointError, match="model.safetensors"):
        resolve_resume(second, tmp_path, "auto")


def test_flipped_bytes_in_training_state_are_rejected(tmp_path):
    model = _model()
    first = _save(tmp_path, 1, model)
    second = _save(tmp_path, 2, model)
    state = second / "training_state.pt"
    data = bytearray(state.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    state.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"training_state\.pt.*truncated or corrupted"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointError, match=r"training_state\.pt"):
        load_training_state(second, _model(), restore_rng=False)
    assert find_latest_checkpoint(tmp_path) == first


def test_missing_manifest_means_incomplete(tmp_path):
    model = _model()
    first = _save(tmp_path, 1, model)
    second = _save(tmp_path, 2, model)
    (second / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(second)
    assert find_latest_checkpoint(tmp_path) == first
    (first / "model.safetensors").write_bytes(b"")
    assert find_latest_checkpoint(tmp_path) is None


def test_keep_last_n(tmp_path):
    model = _model()
    for step in (10, 20, 30, 40, 50):
        path = _save(tmp_path, step, model, keep_last_n=2)
        latest = tmp_path / (tmp_path / "latest").read_text().strip()
        assert latest == path and latest.is_dir()
        names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_"))
        assert names == [f"step_{s:06d}" for s in (10, 20, 30, 40, 50) if step - 10 <= s <= step]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000040", "step_000050"]
    _save(tmp_path, 60, model, keep_last_n=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000060"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step_000060"


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path / "nothing", "auto") is None
    assert resolve_resume(None, tmp_path, False) is None
    with pytest.raises(FileNotFoundError):
        resolve_resume(None, tmp_path, True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume(tmp_path / "step_000099", tmp_path, "auto")
    path = _save(tmp_path / "run", 5, _model())
    assert resolve_resume(None, tmp_path / "run", True) == path
    assert resolve_resume(str(path), tmp_path / "elsewhere", "auto") == path
    with pytest.raises(ValueError):
        resolve_resume(path, tmp_path, False)
