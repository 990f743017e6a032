"""Training checkpoints: round trip, crash safety, integrity checks, pruning, resume resolution, no pickle,
no non-finite weights, a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
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
from pg_vla.training import state_file
from pg_vla.checkpoint_folder import find_latest_checkpoint, verify_checkpoint
from pg_vla.training.checkpoint import (
    NonFiniteCheckpointError,
    load_training_state,
    resolve_resume,
    save_training_checkpoint,
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
    return DatasetStatistics(
        action=ArrayStatistics.from_values(values),
        proprio=ArrayStatistics.from_values(values),
        num_transitions=50,
        num_trajectories=2,
    )


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
        tmp_path / "run",
        100,
        model,
        optimizer=optimizer,
        schedulers=[scheduler],
        averaging=averaging,
        config=config,
        statistics={"bridge": stats, "other": stats_file},
        tokenizer=tok_src,
        data_state={"epoch": 1, "offset": 42},
        inference_state_dict=averaging.shadow,
    )
    expected_draws = (torch.rand(4), np.random.rand(4), random.random())

    assert path == tmp_path / "run" / "step_000100"
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000100"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latest", "step_000100"]
    manifest = verify_checkpoint(path)
    assert set(manifest["files"]) == {
        "model.safetensors",
        "config.json",
        "statistics/bridge.json",
        "statistics/other.json",
        "tokenizer/tokenizer.json",
        "training_state.safetensors",
        "training_state.json",
    }
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
    assert ckpt.read_training_state(path)["model"] is None
    assert (path / "tokenizer" / "tokenizer_config.json").is_file() and len(tokenizer_calls) == 1
    fresh = _model(seed=2)
    assert load_training_state(path, fresh, restore_rng=False)["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_load_into_mismatched_model_is_a_clear_error(tmp_path):
    path = _save(tmp_path, 1, _model())
    other = PiZero(PiZeroConfig.preset("tiny", action_dim=3))
    with pytest.raises(CheckpointError, match="shape"):
        load_training_state(path, other, restore_rng=False)


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    model = _model()
    first = _save(tmp_path / "run", 1, model)
    # the tokenizer folder to bundle is missing: the save fails half-way, after model.safetensors
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        _save(tmp_path / "run", 2, model, tokenizer=tmp_path / "missing")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latest", "step_000001"]
    assert find_latest_checkpoint(tmp_path / "run") == first


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training import checkpoint as ckpt

    ckpt_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
    real = ckpt.write_manifest

    def stall(folder, step):
        marker.write_text(str(folder))
        time.sleep(120)  # killed here: every file but the manifest is written
        real(folder, step)

    ckpt.write_manifest = stall
    model = PiZero(PiZeroConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # optimizer state: two tensors per parameter
    ckpt.save_training_checkpoint(ckpt_dir, 2, model, optimizer=opt, config={"child": True},
                                  data_state={"batches_consumed": 4})
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
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt_dir), str(marker)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
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
        # both halves of the training state are written (AdamW: 2 x 161k float32 values)
        assert (tmp_folder / "training_state.safetensors").stat().st_size > 2 * 4 * 161_000
        assert json.loads((tmp_folder / "training_state.json").read_text())["step"] == 2
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


@pytest.mark.parametrize("name", ["training_state.safetensors", "training_state.json"])
def test_flipped_bytes_in_training_state_are_rejected(tmp_path, name):
    model = _model()
    optimizer, scheduler = _training(model)
    _train_steps(model, optimizer, scheduler, n=1)
    first = _save(tmp_path, 1, model, optimizer=optimizer)
    second = _save(tmp_path, 2, model, optimizer=optimizer)
    state = second / name
    data = bytearray(state.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    state.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=rf"{name}.*truncated or corrupted"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointError, match=name):
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


# ----------------------------------------------------------------------------------------------------------
# The state encoding: JSON + safetensors, no pickle
# ----------------------------------------------------------------------------------------------------------


def test_state_file_keeps_tuples_int_keys_and_shared_tensors():
    from safetensors.torch import load, save

    qmap = torch.linspace(-1, 1, 5)  # one tensor in two places, as bitsandbytes shares its quantization map
    transposed = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    state = {
        "param_groups": [{"betas": (0.9, 0.95), "lr": 1e-3, "foreach": None, "params": [0, 1]}],
        "state": {
            0: {"step": torch.tensor(3.0), "qmap": qmap, "exp_avg": transposed},
            1: {"step": np.int64(3), "qmap": qmap, "state1": torch.tensor([7, 255], dtype=torch.uint8)},
        },
        "floats": [float("nan"), float("inf"), -float("inf"), -0.0, 0.1],
        "python_rng": (3, (1, 2, 2**32 - 1), None),
        "flag": True,
        "mixed": {1: "a", "1": "b"},
    }
    skeleton, tensors = state_file.flatten(state)
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON: no NaN/Infinity literals
    back = state_file.unflatten(json.loads(text), load(save(tensors)))

    assert back["param_groups"] == [{"betas": (0.9, 0.95), "lr": 1e-3, "foreach": None, "params": [0, 1]}]
    assert type(back["param_groups"][0]["betas"]) is tuple
    assert list(back["state"]) == [0, 1] and back["mixed"] == {1: "a", "1": "b"}
    assert back["state"][1]["step"] == 3 and type(back["state"][1]["step"]) is int
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    assert torch.equal(back["state"][0]["exp_avg"], torch.tensor([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]))
    assert torch.equal(back["state"][0]["qmap"], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(back["state"][1]["qmap"], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert back["state"][1]["state1"].dtype == torch.uint8 and back["state"][1]["state1"].tolist() == [7, 255]
    nan, inf, ninf, zero, tenth = back["floats"]
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf and tenth == 0.1
    assert zero == 0.0 and math.copysign(1.0, zero) == -1.0
    assert back["python_rng"] == (3, (1, 2, 4294967295), None) and type(back["python_rng"][1]) is tuple
    assert back["flag"] is True


def test_state_file_refuses_what_json_and_tensors_cannot_hold():
    with pytest.raises(TypeError, match=r"data_state\['blob'\] is a bytes"):
        state_file.flatten({"blob": b"x"}, name="data_state")
    with pytest.raises(TypeError, match="dict key of type tuple"):
        state_file.flatten({(1, 2): 3})
    with pytest.raises(TypeError, match=r"state\[0\]\['x'\] is a set"):
        state_file.flatten([{"x": {1}}])
    skeleton, tensors = state_file.flatten({"a": torch.zeros(2)})
    with pytest.raises(state_file.StateFormatError, match="not in the tensors file"):
        state_file.unflatten(skeleton, {})
    with pytest.raises(state_file.StateFormatError, match="does not name"):
        state_file.unflatten(skeleton, {**tensors, "extra": torch.zeros(1)})
    with pytest.raises(state_file.StateFormatError, match="unknown skeleton tag 'object'"):
        state_file.unflatten({"object": "os.system"}, {})


def test_non_json_data_state_is_refused_before_writing(tmp_path):
    model = _model()
    first = _save(tmp_path, 1, model)
    with pytest.raises(TypeError, match=r"data_state must be JSON-like: data_state\['position'\] is a bytes"):
        _save(tmp_path, 2, model, data_state={"position": b"\x00"})
    with pytest.raises(TypeError, match="no tensors"):
        _save(tmp_path, 2, model, data_state={"position": torch.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert find_latest_checkpoint(tmp_path) == first


class _Payload:
    """Unpickling this calls Path.touch(marker): stands for any code a forged pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _rewrite_manifest(folder: Path, fmt: str) -> None:
    """What a forger does: list every file with its real size and sha256."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    (folder / "manifest.json").write_text(json.dumps({"format": fmt, "step": 1, "files": files}))


def test_forged_pickles_never_run_on_resume(tmp_path):
    marker = tmp_path / "code_ran"
    payload = pickle.dumps({"format": "pg-vla-training-checkpoint-1", "step": 1, "x": _Payload(marker)})
    pickle.loads(payload)  # the payload is live: unpickling it runs code
    assert marker.exists()
    marker.unlink()

    model = _model()
    optimizer, scheduler = _training(model)
    _train_steps(model, optimizer, scheduler, n=1)
    good = _save(tmp_path / "good", 1, model, optimizer=optimizer, schedulers=[scheduler])

    def forged(name: str) -> Path:
        folder = tmp_path / name / "step_000001"
        shutil.copytree(good, folder)
        (folder.parent / "latest").write_text("step_000001\n")
        return folder

    # 1. the older format: a pickled training_state.pt and a matching manifest
    old = forged("old")
    (old / "training_state.json").unlink()
    (old / "training_state.safetensors").unlink()
    (old / "training_state.pt").write_bytes(payload)
    _rewrite_manifest(old, "pg-vla-training-checkpoint-1")
    assert verify_checkpoint(old)["format"] == "pg-vla-training-checkpoint-1"  # still loads for inference
    found = resolve_resume(None, old.parent, "auto")
    assert found == old
    with pytest.raises(CheckpointError, match=r"older format.*training_state\.pt.*no longer reads"):
        load_training_state(found, _model(), optimizer=_training(_model())[0])
    assert not marker.exists()

    # 2. the pickle in place of either half of the training state
    for name in ("training_state.safetensors", "training_state.json"):
        folder = forged(name)
        (folder / name).write_bytes(payload)
        _rewrite_manifest(folder, ckpt.FORMAT)
        verify_checkpoint(folder)
        with pytest.raises(CheckpointError, match=rf"{re.escape(name)} is truncated or corrupted"):
            load_training_state(folder, _model(), restore_rng=False)
        assert not marker.exists()

    # 3. an extra pickle next to a valid state is never opened
    extra = forged("extra")
    (extra / "training_state.pt").write_bytes(payload)
    _rewrite_manifest(extra, ckpt.FORMAT)
    fresh = _model(seed=4)
    assert load_training_state(extra, fresh, optimizer=_training(fresh)[0], restore_rng=False)["step"] == 1
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# Resuming restores training bit-exactly (torch AdamW and bitsandbytes' 8-bit AdamW, schedule, EMA, RNG)
# ----------------------------------------------------------------------------------------------------------


def _assert_same_state(a, b, where="state"):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _clone_state(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_state(v) for v in value)
    return value


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_resume_continues_training_bit_exactly(tmp_path, name):
    from pg_vla.training.averaging import AveragingConfig, make_weight_average
    from pg_vla.training.optim import OptimizerConfig, make_optimizer
    from pg_vla.training.schedules import ScheduleConfig, make_scheduler

    def build(seed):
        model = _model(seed)
        optimizer = make_optimizer(
            model, OptimizerConfig(name=name, vlm_lr=1e-3, action_expert_lr=3e-3, vlm_weight_decay=0.01)
        )
        scheduler = make_scheduler(optimizer, ScheduleConfig(kind="cosine", warmup_steps=2, total_steps=10))
        return model, optimizer, scheduler, make_weight_average(AveragingConfig(kind="ema", decay=0.9), model)

    gen = torch.Generator().manual_seed(11)
    targets = {n: torch.randn(p.shape, generator=gen) for n, p in _model().named_parameters()}

    def train_step(model, optimizer, scheduler, averaging, step):
        # the step's noise comes from the global python, numpy and torch generators
        scale = random.random() + float(np.random.rand())
        loss = sum(
            ((p - targets[n] - scale * torch.randn(p.shape)) ** 2).mean()
            for n, p in model.named_parameters()
            if p.requires_grad
        )
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        averaging.update(model, step)
        return loss.item()

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    model, optimizer, scheduler, averaging = build(0)
    for step in (1, 2, 3):
        train_step(model, optimizer, scheduler, averaging, step)
    saved_optimizer = _clone_state(optimizer.state_dict())
    saved_averaging = _clone_state(averaging.state_dict())
    path = _save(
        tmp_path,
        3,
        model,
        optimizer=optimizer,
        schedulers=[scheduler],
        averaging=averaging,
        inference_state_dict=averaging.averaged_state_dict(model),
    )
    continued = [train_step(model, optimizer, scheduler, averaging, step) for step in (4, 5, 6)]

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # other RNG states, restored by the load
    fresh, fresh_opt, fresh_sched, fresh_avg = build(1)
    load_training_state(path, fresh, optimizer=fresh_opt, schedulers=[fresh_sched], averaging=fresh_avg)
    restored_optimizer = fresh_opt.state_dict()
    _assert_same_state(saved_optimizer, restored_optimizer)
    _assert_same_state(saved_averaging, fresh_avg.state_dict())
    if name == "adamw8bit":  # bitsandbytes kept 8-bit states for the large tensors
        quant = [s["__bnb_optimizer_quant_state__"] for s in restored_optimizer["state"].values()]
        assert any(q["state1"].dtype == torch.uint8 for q in quant)
    resumed = [train_step(fresh, fresh_opt, fresh_sched, fresh_avg, step) for step in (4, 5, 6)]

    assert resumed == continued  # the same float losses, bit for bit
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    _assert_same_state(averaging.state_dict(), fresh_avg.state_dict())
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()


# ----------------------------------------------------------------------------------------------------------
# Non-finite weights are never saved; a full disk says so
# ----------------------------------------------------------------------------------------------------------


def test_non_finite_weights_are_never_saved(tmp_path):
    model = _model()
    optimizer, scheduler = _training(model)
    _train_steps(model, optimizer, scheduler, n=1)
    first = _save(tmp_path, 1, model, optimizer=optimizer)
    name, param = list(model.named_parameters())[5]
    good = param.detach().clone()

    def unchanged():
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
        assert find_latest_checkpoint(tmp_path) == first

    with torch.no_grad():
        param.view(-1)[0] = float("nan")
        param.view(-1)[1] = float("inf")
    with pytest.raises(
        NonFiniteCheckpointError,
        match=rf"not saving checkpoint step_000002: 1 tensor\(s\) hold NaN or Inf, first "
        rf"model\.safetensors {re.escape(name)} \(2 of {param.numel()} values\); the previous "
        r"checkpoint step_000001 stays `latest`",
    ):
        _save(tmp_path, 2, model, optimizer=optimizer)
    unchanged()

    # published weights fine, raw ones not (an EMA checkpoint)
    published = {k: v.detach().clone() for k, v in model.state_dict().items()}
    published[name] = good
    with pytest.raises(NonFiniteCheckpointError, match=rf"raw training weights {re.escape(name)} \(2 of"):
        _save(tmp_path, 2, model, optimizer=optimizer, inference_state_dict=published)
    unchanged()

    with torch.no_grad():
        param.copy_(good)
    index = next(i for i, p in enumerate(optimizer.param_groups[0]["params"]) if p is param)
    optimizer.state[param]["exp_avg_sq"].view(-1)[3] = float("inf")
    with pytest.raises(NonFiniteCheckpointError, match=rf"optimizer state state\.{index}\.exp_avg_sq \(1 of"):
        _save(tmp_path, 2, model, optimizer=optimizer)
    unchanged()
    optimizer.state[param]["exp_avg_sq"].view(-1)[3] = 0.0
    assert _save(tmp_path, 2, model, optimizer=optimizer) == tmp_path / "step_000002"


_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training import checkpoint as ckpt

    ckpt_dir = Path(sys.argv[1])
    torch.manual_seed(0)
    model = PiZero(PiZeroConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    first = ckpt.save_training_checkpoint(ckpt_dir, 1, model, optimizer=opt, config={})
    model_size = (first / "model.safetensors").stat().st_size
    state_size = (first / "training_state.safetensors").stat().st_size
    # From here on no file may grow past a size between the two: model.safetensors fits, the optimizer
    # state does not. With SIGXFSZ ignored the kernel fails the write with EFBIG, as a full disk fails
    # it with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = (model_size + state_size) // 2
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    result = {"model_size": model_size, "state_size": state_size, "limit": limit}
    try:
        ckpt.save_training_checkpoint(ckpt_dir, 2, model, optimizer=opt, config={})
    except Exception as err:
        result.update(type=type(err).__name__, oserror=isinstance(err, OSError), errno=getattr(err, "errno", None),
                      message=str(err))
    print(json.dumps(result))
""")


def test_save_that_runs_out_of_space_names_the_file_and_keeps_the_previous(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_DISK_CHILD)
    ckpt_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(ckpt_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_size"] < result["limit"] < result["state_size"]
    assert result["type"] == "CheckpointDiskFullError" and result["oserror"] and result["errno"] == errno.EFBIG
    message = result["message"]
    assert "writing training_state.safetensors: a file-size limit was reached" in message
    assert "the previous checkpoint step_000001 and `latest` are intact" in message
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000001"]  # the partial folder is gone
    assert find_latest_checkpoint(ckpt_dir) == ckpt_dir / "step_000001"
    assert load_training_state(ckpt_dir / "step_000001", _model(seed=5), restore_rng=False)["step"] == 1


# ----------------------------------------------------------------------------------------------------------
# What finding a checkpoint logs
# ----------------------------------------------------------------------------------------------------------


def test_finding_a_checkpoint_for_inference_does_not_say_resuming(tmp_path, caplog):
    model = _model()
    first = _save(tmp_path, 1, model)
    second = _save(tmp_path, 2, model)
    with caplog.at_level("INFO", logger="pg_vla.training.checkpoint"):
        (tmp_path / "latest").unlink()
        assert find_latest_checkpoint(tmp_path) == second
        assert caplog.text == ""
        shutil.rmtree(second)
        (tmp_path / "latest").write_text("step_000002\n")  # names a removed folder
        assert find_latest_checkpoint(tmp_path) == first
    assert "step_000002, which is missing or damaged" in caplog.text
    assert f"using checkpoint {first} instead" in caplog.text
    assert "resum" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="pg_vla.training.checkpoint"):
        assert resolve_resume(None, tmp_path, "auto") == first
    assert f"resuming from checkpoint {first}" in caplog.text
