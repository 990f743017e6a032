"""Fine-tuning from a pi0 folder (random, tiny, written by transformers' PI0) on the real BridgeData V2 subset,
with the pi0_bridge config's conventions: state/actions zero-padded to the checkpoint's dims, padded dims
out of the loss, mean/std normalization, padded resizing, EMA, 8-bit AdamW; then served."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.model.vla.pizero import PiZero
from pg_vla.testing.pi0_folders import GEOMETRIES, write_pi0_folder
from pg_vla.training.lora import LoraSettings, apply_lora
from pg_vla.training.optim import ACTION_EXPERT_PREFIXES, OptimizerConfig, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / ".." / "shared" / "data" / "bridge_debug"
# pi0-like: more state/action dims than bridge's 7 (pi0 has 32), a vocabulary that holds the tiny tokenizer's ids
GEOMETRY = dataclasses.replace(GEOMETRIES["gqa"], vocab=1665, state_dim=12, action_dim=10, chunk=4)

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


@pytest.fixture(scope="module")
def pi0_folder(tmp_path_factory) -> Path:
    folder, _ = write_pi0_folder(tmp_path_factory.mktemp("pi0_base") / "pi0", GEOMETRY, "transformers_prefixed")
    return folder


STEPS = 30


@pytest.fixture(scope="module")
def finetuned(pi0_folder, tiny_checkpoint_dir, tmp_path_factory) -> Path:
    if not BRIDGE.is_dir():
        pytest.skip(f"the BridgeData V2 subset is not at {BRIDGE}")
    run = tmp_path_factory.mktemp("pi0_finetune") / "run"
    args = [
        f"pretrained_model_path={pi0_folder}",
        f"tokenizer_path={tiny_checkpoint_dir}",
        f"data.data_path={BRIDGE}",
        f"log_dir={run}",
        f"n_updates={STEPS}",
        "global_batch_size=8",
        "per_device_batch_size=8",
        "precision=fp32",
        "device=cpu",
        "log_every=1",
        f"save_every={STEPS}",
        f"validation.every={STEPS}",
        "validation.batches=2",
        "model.horizon_steps=4",
        "model.max_text_tokens=24",
        "optimizer.vlm_lr=3e-3",
        "optimizer.action_expert_lr=3e-3",
        "schedule.warmup_steps=1",
        "data.shuffle_buffer=50",
        "data.read_threads=1",
        "data.transform_threads=1",
        "averaging.decay=0.5",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "--config-name=pi0_bridge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return run


def test_finetuning_from_pi0_lowers_the_validation_loss_and_keeps_pi0s_dims(finetuned):
    """pi0_bridge validates the loaded pi0 before the first update (validation.at_start): the same
    validation batches with the same noise after training give a lower loss."""
    records = [json.loads(line) for line in (finetuned / "log.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [0, STEPS]
    assert val[STEPS] < 0.98 * val[0], val  # paired: the same batches and noise; measured 2.28 -> 2.15
    assert len([r for r in records if "loss" in r and r.get("step", 0) > 0]) == STEPS
    ckpt = finetuned / "checkpoints" / f"step_{STEPS:06d}"
    model = PiZero.from_pretrained(ckpt)
    assert (model.config.action_dim, model.config.proprio_dim) == (GEOMETRY.action_dim, GEOMETRY.state_dim)
    run_config = json.loads((ckpt / "config.json").read_text())
    assert run_config["data"]["normalization"] == "mean_std" and run_config["data"]["image_resize"] == "pad"


def test_padded_dims_carry_no_loss(pi0_folder):
    """The loss with a (B, H, A) mask is the MSE over the data's dims alone, computed by hand from the velocity."""
    model = PiZero.from_pretrained(pi0_folder, horizon_steps=4)
    cfg, b, data_dims = model.config, 2, 7
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1
    text = torch.randint(1, 500, (b, 6), generator=g)
    proprio = torch.zeros(b, 1, cfg.proprio_dim)
    proprio[..., :data_dims] = torch.randn(b, 1, data_dims, generator=g)
    actions = torch.zeros(b, 4, cfg.action_dim)
    actions[..., :data_dims] = torch.rand(b, 4, data_dims, generator=g) * 2 - 1
    noise, time = torch.randn(b, 4, cfg.action_dim, generator=g), torch.tensor([0.25, 0.75])
    steps = torch.tensor([[True] * 4, [True, True, False, False]])
    mask = steps[..., None] & (torch.arange(cfg.action_dim) < data_dims)
    loss = model(images, text, None, proprio, actions, noise=noise, time=time, action_mask=mask)
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    with torch.no_grad():
        velocity = model.predict_velocity(images, text, None, proprio, x_t, time)
    error = (velocity - (noise - actions))[..., :data_dims].pow(2)  # (B, H, 7)
    expected = error[steps].mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-6)
    loss.backward()
    decoder_grad = model.action_decoder.weight.grad  # (A_model, D): rows of padded dims get nothing
    assert decoder_grad[data_dims:].abs().max() == 0 and decoder_grad[:data_dims].abs().max() > 0


@pytest.mark.parametrize("quantize", [False, True], ids=["lora", "qlora"])
def test_lora_on_a_pi0_model_changes_only_adapters_and_the_action_expert(pi0_folder, quantize):
    model = PiZero.from_pretrained(pi0_folder, horizon_steps=4)
    adapted = apply_lora(model, LoraSettings(r=4, alpha=8, quantize=quantize))
    assert adapted
    cfg, b = model.config, 2
    g = torch.Generator().manual_seed(1)
    batch = {
        "images": torch.rand(b, 1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1,
        "text_ids": torch.randint(1, 500, (b, 6), generator=g),
        "text_mask": None,
        "proprio": torch.randn(b, 1, cfg.proprio_dim, generator=g),
        "actions": torch.rand(b, 4, cfg.action_dim, generator=g) * 2 - 1,
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, OptimizerConfig(name="adamw8bit", vlm_lr=1e-2, action_expert_lr=1e-2))
    for step in range(2):
        torch.manual_seed(step)
        model(**batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = {k for k in changed if ".lora_A." in k or ".lora_B." in k}
    action = {k for k in changed if k.startswith(ACTION_EXPERT_PREFIXES)}
    assert changed == adapters | action and adapters and action


def test_the_finetuned_checkpoint_serves_actions_of_the_datasets_dimension(finetuned):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from pg_vla.serving.launch import ServerProcess

    server = ServerProcess(["--checkpoint_path", str(finetuned), "--num_threads", "1"], finetuned / "serve.log")
    server.start()
    try:
        server.wait_ready()
        client = WebsocketClientPolicy(host=server.host, port=server.port)
        rng = np.random.default_rng(0)
        reply = client.infer(
            {
                "observation/image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                "observation/state": rng.normal(0, 0.1, 7),
                "prompt": "put the cup in the sink",
            }
        )
    finally:
        server.stop()
    actions = np.asarray(reply["actions"])
    assert actions.shape == (4, 7) and np.all(np.isfinite(actions))
