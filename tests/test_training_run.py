"""The Hydra entry point and the training loop, end to end on CPU (quickstart config, tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_vla.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def test_bridge_config_composes_without_data_and_takes_nested_overrides():
    result = _run(
        [
            "--config-name=bridge",
            "--cfg",
            "job",
            "data.mix=oxe_simple",
            "optimizer.vlm_lr=1e-4",
            "model.horizon_steps=8",
        ]
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert "mix: oxe_simple" in printed and "vlm_lr: 0.0001" in printed and "horizon_steps: 8" in printed
    assert "global_batch_size: 1024" in printed and "per_device_batch_size: 16" in printed


def test_batch_sizes_must_divide(tmp_path):
    cfg = TrainConfig(
        pretrained_model_path=str(tmp_path),
        data={"data_path": str(tmp_path)},
        log_dir=str(tmp_path),
        global_batch_size=48,
        per_device_batch_size=16,
    )
    assert cfg.gradient_accumulation(1) == 3
    with pytest.raises(ValueError, match="not divisible by per_device_batch_size 16 x world size 2"):
        cfg.gradient_accumulation(2)
    with pytest.raises(ValueError, match="pretrained_model_path is not set"):
        TrainConfig(pretrained_model_path="", data={"data_path": str(tmp_path)}, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data.batch_size"):
        TrainConfig(
            pretrained_model_path=str(tmp_path),
            data={"batch_size": 4, "data_path": str(tmp_path)},
            log_dir=str(tmp_path),
        )


@pytest.mark.parametrize(
    "override,valid,message",
    [
        ("n_updates=abc", "n_updates=1000", "training config key 'n_updates' must be an integer, got 'abc' (str)"),
        ("seed=1.5", "seed=1", "training config key 'seed' must be an integer, got 1.5 (float)"),
        ("precision=3", "precision=fp32", "training config key 'precision' must be a string, got 3 (int)"),
        (
            "gradient_checkpointing=2",
            "gradient_checkpointing=true",
            "training config key 'gradient_checkpointing' must be true or false, got 2 (int)",
        ),
    ],
)
def test_config_values_of_the_wrong_kind_are_named(tmp_path, override, valid, message):
    """The key given is named, not a later config derived from it (n_updates=abc once read as a bad
    schedule.total_steps); the same key with a value of the right kind builds."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    paths = [f"pretrained_model_path={tmp_path}", f"data.data_path={tmp_path}", f"log_dir={tmp_path / 'run'}"]
    with initialize_config_dir(str(ROOT / "config" / "train"), version_base=None):
        bad, good = (
            OmegaConf.to_container(compose("bridge", overrides=[o, *paths]), resolve=True) for o in (override, valid)
        )
    with pytest.raises(ValueError) as raised:
        TrainConfig.from_dict(bad)
    assert str(raised.value) == message
    TrainConfig.from_dict(good)


def test_unsupported_combinations_are_refused_at_start(tmp_path):
    common = {"pretrained_model_path": str(tmp_path), "data": {"data_path": str(tmp_path)}, "log_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="bf16_pure is not supported with distributed=fsdp"):
        TrainConfig(**common, distributed="fsdp", precision="bf16_pure")
    with pytest.raises(ValueError, match="distributed=fsdp supports full fine-tuning without weight averaging"):
        TrainConfig(**common, distributed="fsdp", lora=True)
    with pytest.raises(ValueError, match="quantize=true"):
        TrainConfig(**common, quantize=True)
    TrainConfig(**common, distributed="fsdp", precision="bf16")  # allowed
    TrainConfig(**common, distributed="fsdp", optimizer={"name": "adamw", "offload": True})
    TrainConfig(**common, distributed="fsdp", optimizer={"name": "adamw8bit", "offload": True})


def test_tokenizer_path_must_be_a_folder_holding_a_tokenizer(tmp_path):
    common = dict(pretrained_model_path=str(tmp_path), data={"data_path": str(tmp_path)}, log_dir=str(tmp_path))
    assert TrainConfig(**common).tokenizer_path is None  # default: the tokenizer of pretrained_model_path
    with pytest.raises(FileNotFoundError, match="tokenizer_path .*missing does not exist"):
        TrainConfig(**common, tokenizer_path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        TrainConfig(**common, tokenizer_path=str(tmp_path / "empty"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes(b"")
    assert TrainConfig(**common, tokenizer_path=str(tmp_path / "tok")).tokenizer_path == str(tmp_path / "tok")


def test_quickstart_trains_logs_and_checkpoints(quickstart_runs):
    from pg_vla.model.checkpoint import load_model
    from pg_vla.checkpoint_folder import list_checkpoints, verify_checkpoint

    quickstart_run = quickstart_runs[0] / "run"
    records = [json.loads(line) for line in (quickstart_run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]  # two accumulation micro-batches per step, one record per step
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == 2
    assert (quickstart_run / "loss_curve.png").stat().st_size > 0
    checkpoints = list_checkpoints(quickstart_run / "checkpoints")
    assert [p.name for p in checkpoints] == ["step_000002", "step_000004"]
    for path in checkpoints:
        verify_checkpoint(path)
    latest = checkpoints[-1]
    assert (latest / "statistics" / "bridge_dataset.json").is_file()
    model = load_model(latest / "model.safetensors")
    assert model.config.proprio_dim == 7 and model.config.max_text_tokens == 12
