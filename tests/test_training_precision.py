"""precision=bf16 / bf16_pure and compile=true in the real trainer (tiny Parquet episodes, in process), and
the fp32 master weights that let bf16 parameters take updates smaller than bf16's spacing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import load_file

from conftest import tiny_train_config
from pg_vla.training.config import TrainConfig
from pg_vla.training.optim import MASTER_KEY, MasterWeightOptimizer
from pg_vla.training.state_file import flatten, unflatten
from pg_vla.training.trainer import Trainer

LR = 5e-5


# ---- bf16 rounding, hand-checked ---------------------------------------------------------------------------
# bf16 keeps 8 significant bits: the representable values in [1, 2) are 2^-7 = 0.0078125 apart. With a
# constant gradient g, Adam's bias-corrected moments are m = g and v = g^2, so every step moves the weight by
# lr * g / (|g| + eps) = lr (to 1e-8 relative): 5e-5, far below half the spacing (0.0039).


def _bf16_weight(value: float = 1.0, n: int = 1) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((n,), value, dtype=torch.bfloat16))


def _steps(opt, p: torch.nn.Parameter, n: int) -> None:
    for _ in range(n):
        p.grad = torch.full_like(p, -1.0)  # descent moves the weight up by lr per step
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_plain_adamw_rounds_lr_5e5_updates_of_a_bf16_weight_away() -> None:
    p = _bf16_weight()
    _steps(torch.optim.AdamW([p], lr=LR, weight_decay=0.0, foreach=False), p, 100)
    assert p.item() == 1.0  # 100 updates of 5e-5, each rounded back to 1.0


@pytest.mark.parametrize("inner", ["adamw", "adamw8bit"])
def test_master_weights_accumulate_the_updates(inner) -> None:
    # 4096 elements: bitsandbytes keeps 8-bit moments from that size on (smaller tensors get 32-bit state).
    p = _bf16_weight(n=4096)
    if inner == "adamw8bit":
        import bitsandbytes as bnb

        base = bnb.optim.AdamW8bit([p], lr=LR, weight_decay=0.0)
    else:
        base = torch.optim.AdamW([p], lr=LR, weight_decay=0.0, foreach=True)
    opt = MasterWeightOptimizer(base)
    _steps(opt, p, 100)
    master = opt.state[p][MASTER_KEY]
    assert master.dtype == torch.float32 and p.dtype == torch.bfloat16
    moved = master.double() - 1.0
    if inner == "adamw":
        # exact: 100 * 5e-5 = 0.005; each fp32 add of ~5e-5 near 1 rounds by <= 2^-24 (100 * 2^-23 bounds it).
        assert torch.allclose(moved, torch.full_like(moved, 0.005), rtol=0, atol=100 * 2**-23)
    else:
        # 8-bit moments are quantized (dynamic 8-bit code, a few % relative error per read): the step is
        # lr times m/sqrt(v) of the dequantized moments, so the distance is 0.005 within 10%.
        assert torch.allclose(moved, torch.full_like(moved, 0.005), rtol=0.1, atol=0)
    # ~1.005 in bf16: 0.0045..0.0055 is past half of 2^-7 (0.0039), so it rounds up to 1 + 2^-7.
    assert torch.all(p == 1.0078125)
    if inner == "adamw8bit":
        assert opt.state[p]["state1"].dtype == torch.uint8  # the 8-bit path ran


def test_make_optimizer_wraps_bf16_models_only() -> None:
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training.optim import OptimizerConfig, make_optimizer

    assert not isinstance(make_optimizer(PiZero(PiZeroConfig.preset("tiny")), OptimizerConfig()), MasterWeightOptimizer)
    model = PiZero(PiZeroConfig.preset("tiny")).to(torch.bfloat16)
    opt = make_optimizer(model, OptimizerConfig(name="adamw8bit"))
    assert isinstance(opt, MasterWeightOptimizer)
    assert {id(p) for g in opt.param_groups for p in g["params"]} <= {id(p) for p in model.parameters()}


def test_master_weights_survive_a_state_round_trip() -> None:
    """The optimizer state goes through state_file (what checkpoints store) into a fresh optimizer; the
    resumed run's masters and weights equal those of a run that never stopped, bit for bit."""
    straight = _bf16_weight(n=8)
    opt = MasterWeightOptimizer(torch.optim.AdamW([straight], lr=LR, weight_decay=0.0))
    _steps(opt, straight, 60)

    first = _bf16_weight(n=8)
    opt1 = MasterWeightOptimizer(torch.optim.AdamW([first], lr=LR, weight_decay=0.0))
    _steps(opt1, first, 30)
    skeleton, tensors = flatten(opt1.state_dict())
    skeleton = json.loads(json.dumps(skeleton))  # as written to disk
    saved = unflatten(skeleton, {k: v.clone() for k, v in tensors.items()})
    assert saved["state"][0][MASTER_KEY].dtype == torch.float32
    resumed = torch.nn.Parameter(first.detach().clone())  # the bf16 weights a checkpoint holds
    opt2 = MasterWeightOptimizer(torch.optim.AdamW([resumed], lr=LR, weight_decay=0.0))
    opt2.load_state_dict(saved)
    assert opt2.state[resumed][MASTER_KEY].dtype == torch.float32
    assert opt2.state[resumed]["exp_avg"].dtype == torch.float32  # not cast to the parameter's bf16
    assert resumed.dtype == torch.bfloat16
    _steps(opt2, resumed, 30)
    assert torch.equal(opt2.state[resumed][MASTER_KEY], opt.state[straight][MASTER_KEY])
    assert torch.equal(resumed, straight)
    # 1 + 60 * 5e-5 = 1.003: below 1 + 2^-8 (half the spacing), so the bf16 weight still reads 1.0 while the
    # master holds the progress.
    assert torch.all(resumed == 1.0)
    assert torch.allclose(
        opt2.state[resumed][MASTER_KEY].double(), torch.full((8,), 1.003, dtype=torch.float64), rtol=0, atol=60 * 2**-23
    )


def test_fp32_masters_track_fp32_on_a_fixed_batch_while_plain_bf16_stalls() -> None:
    """40 AdamW steps of lr 1e-5 on one fixed batch (fixed noise and times) of the tiny model: bf16 weights with
    fp32 masters follow the fp32 run's loss within 2% at every step and lose as much in all (within 5%);
    plain AdamW on the bf16 weights, whose updates mostly round away, loses less than half as much."""
    from test_optim import fixed_batch, tiny_model

    from pg_vla.training.optim import OptimizerConfig, make_optimizer

    def curve(kind: str) -> list[float]:
        model = tiny_model(0)
        if kind != "fp32":
            model = model.to(torch.bfloat16)
        opt = make_optimizer(model, OptimizerConfig(name="adamw", vlm_lr=1e-5, action_expert_lr=1e-5))
        assert isinstance(opt, MasterWeightOptimizer) == (kind != "fp32")
        if kind == "plain":
            opt = opt.inner
        dtype = next(model.parameters()).dtype
        images, text_ids, text_mask, proprio, actions, noise, time = fixed_batch(model.config)
        losses = []
        for _ in range(40):
            loss = model(
                images.to(dtype),
                text_ids,
                text_mask,
                proprio.to(dtype),
                actions.to(dtype),
                noise=noise.to(dtype),
                time=time.to(dtype),
            )
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            losses.append(loss.item())
        return losses

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32, master, plain = curve("fp32"), curve("master"), curve("plain")
    finally:
        torch.set_num_threads(threads)
    assert all(abs(m - f) <= 0.02 * f for m, f in zip(master, fp32)), (master, fp32)
    drop = fp32[0] - fp32[-1]
    assert drop > 0.05 and abs((master[0] - master[-1]) - drop) <= 0.05 * drop, (master, fp32)
    assert plain[0] - plain[-1] < 0.5 * drop, (plain, fp32)


# ---- the trainer ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parquet_data(tiny_episodes: Path) -> Path:
    return tiny_episodes


def _config(parquet_data: Path, paligemma: Path, log_dir: Path, **overrides) -> TrainConfig:
    return tiny_train_config(parquet_data, paligemma, log_dir, **overrides)


def _losses(log_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (log_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def _dtypes(log_dir: Path, step: int) -> set[torch.dtype]:
    return {
        t.dtype for t in load_file(str(log_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors")).values()
    }


@pytest.fixture(scope="module")
def fp32_run(parquet_data, tiny_checkpoint_dir, tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("fp32") / "run"
    Trainer(_config(parquet_data, tiny_checkpoint_dir, log_dir, precision="fp32")).run()
    return log_dir


def test_bf16_autocast_trains_and_saves_fp32_weights(parquet_data, tiny_checkpoint_dir, fp32_run, tmp_path) -> None:
    Trainer(_config(parquet_data, tiny_checkpoint_dir, tmp_path / "run", precision="bf16")).run()
    losses, reference = _losses(tmp_path / "run"), _losses(fp32_run)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    # The same weights, batches, noise and times as the fp32 run, so the per-step losses (noisy across steps:
    # each draws new flow times) are comparable step by step. They differ only by bf16 matmuls (8
    # significant bits, ~2^-8 relative per product, partly averaging out), and the updates by what those
    # errors do to the gradients: the bf16 run follows the fp32 trajectory within 2% at every step.
    assert [losses[s] == pytest.approx(reference[s], rel=0.02) for s in (1, 2, 3, 4)] == [True] * 4, (losses, reference)
    assert _dtypes(tmp_path / "run", 4) == {torch.float32}
    first, last = (
        load_file(str(tmp_path / "run" / "checkpoints" / f"step_{s:06d}" / "model.safetensors")) for s in (1, 4)
    )
    assert any(not torch.equal(first[k], last[k]) for k in first)  # it trained


def test_gradient_checkpointing_follows_the_plain_run(parquet_data, tiny_checkpoint_dir, fp32_run, tmp_path) -> None:
    """Recomputing each joint layer in the backward pass changes no arithmetic: the same losses and weights as
    the fp32 run at every step (to float32 rounding of the recomputed activations: exactly equal here)."""
    trainer = Trainer(
        _config(parquet_data, tiny_checkpoint_dir, tmp_path / "run", precision="fp32", gradient_checkpointing=True)
    )
    trainer.run()
    assert trainer.model.joint.gradient_checkpointing and trainer.model.vision_tower.encoder.gradient_checkpointing
    losses, reference = _losses(tmp_path / "run"), _losses(fp32_run)
    assert sorted(losses) == sorted(reference) == [1, 2, 3, 4]
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=0), step
    ours = load_file(str(tmp_path / "run" / "checkpoints" / "step_000004" / "model.safetensors"))
    theirs = load_file(str(fp32_run / "checkpoints" / "step_000004" / "model.safetensors"))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0, msg=key)


def test_optimizer_offload_follows_the_plain_run(parquet_data, tiny_checkpoint_dir, fp32_run, tmp_path) -> None:
    """optimizer.offload=true in the trainer: the step runs on host copies of the parameters (here the host is
    the device, the same code path), with the same arithmetic: the same losses and weights as the fp32 run."""
    trainer = Trainer(
        _config(
            parquet_data,
            tiny_checkpoint_dir,
            tmp_path / "run",
            optimizer={"name": "adamw", "vlm_lr": 1e-3, "action_expert_lr": 1e-3, "offload": True},
        )
    )
    trainer.run()
    assert isinstance(trainer.optimizer, MasterWeightOptimizer) and trainer.optimizer.offload
    losses, reference = _losses(tmp_path / "run"), _losses(fp32_run)
    assert sorted(losses) == [1, 2, 3, 4] and all(losses[s] == reference[s] for s in reference), (losses, reference)
    ours = load_file(str(tmp_path / "run" / "checkpoints" / "step_000004" / "model.safetensors"))
    theirs = load_file(str(fp32_run / "checkpoints" / "step_000004" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_bf16_pure_saves_bf16_weights_and_fp32_masters(parquet_data, tiny_checkpoint_dir, fp32_run, tmp_path) -> None:
    cfg = _config(
        parquet_data,
        tiny_checkpoint_dir,
        tmp_path / "run",
        precision="bf16_pure",
        optimizer={"name": "adamw", "vlm_lr": LR, "action_expert_lr": LR},
    )
    Trainer(cfg).run()
    losses, reference = _losses(tmp_path / "run"), _losses(fp32_run)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert losses[1] == pytest.approx(reference[1], rel=0.05)  # bf16 weights and inputs, as above
    assert _dtypes(tmp_path / "run", 4) == {torch.bfloat16}
    step = tmp_path / "run" / "checkpoints" / "step_000004"
    with safetensors.safe_open(str(step / "training_state.safetensors"), "pt") as f:
        masters = [f.get_tensor(k) for k in f.keys() if MASTER_KEY in k]
    assert masters and all(t.dtype == torch.float32 for t in masters)


def test_bf16_pure_resume_matches_an_uninterrupted_run(parquet_data, tiny_checkpoint_dir, tmp_path) -> None:
    """The masters go through the real checkpoint (save, load on resume): 2 + 2 steps equal 4 steps."""
    opt = {"name": "adamw", "vlm_lr": LR, "action_expert_lr": LR}
    Trainer(
        _config(parquet_data, tiny_checkpoint_dir, tmp_path / "straight", precision="bf16_pure", optimizer=opt)
    ).run()
    Trainer(
        _config(
            parquet_data, tiny_checkpoint_dir, tmp_path / "resumed", precision="bf16_pure", optimizer=opt, n_updates=2
        )
    ).run()
    Trainer(
        _config(parquet_data, tiny_checkpoint_dir, tmp_path / "resumed", precision="bf16_pure", optimizer=opt)
    ).run()
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "step_000004" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_000004" / "model.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    with (
        safetensors.safe_open(
            str(tmp_path / "straight" / "checkpoints" / "step_000004" / "training_state.safetensors"), "pt"
        ) as a,
        safetensors.safe_open(
            str(tmp_path / "resumed" / "checkpoints" / "step_000004" / "training_state.safetensors"), "pt"
        ) as b,
    ):
        keys = [k for k in a.keys() if MASTER_KEY in k]
        assert keys and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in keys)


@pytest.mark.parametrize(
    "overrides,weights_dtype",
    [
        (
            {
                "lora": True,
                "lora_r": 2,
                "lora_alpha": 4,
                "precision": "bf16",
                "averaging": {"kind": "ema", "decay": 0.5},
            },
            torch.float32,
        ),
        (
            {
                "precision": "bf16_pure",
                "averaging": {"kind": "ema", "decay": 0.5},
                "optimizer": {"name": "adamw8bit", "offload": True},
            },
            torch.bfloat16,
        ),
        (
            {"lora": True, "lora_r": 2, "lora_alpha": 4, "precision": "bf16_pure", "gradient_checkpointing": True},
            torch.bfloat16,
        ),
    ],
    ids=["lora-bf16-ema", "bf16_pure-ema-8bit-offload", "lora-bf16_pure-checkpointing"],
)
def test_allowed_combinations_train_and_load_as_policies(
    parquet_data, tiny_checkpoint_dir, tmp_path, overrides, weights_dtype
) -> None:
    """Precision modes with LoRA, EMA, 8-bit AdamW and offload together: 2 finite steps, weights of the mode's
    dtype that moved, and a checkpoint a Policy loads and samples from."""
    import numpy as np

    from pg_vla.policy import Observation, Policy

    Trainer(_config(parquet_data, tiny_checkpoint_dir, tmp_path / "run", n_updates=2, **overrides)).run()
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    assert _dtypes(tmp_path / "run", 2) == {weights_dtype}
    first, last = (
        load_file(str(tmp_path / "run" / "checkpoints" / f"step_{s:06d}" / "model.safetensors")) for s in (1, 2)
    )
    assert any(not torch.equal(first[k], last[k]) for k in first)
    policy = Policy.from_checkpoint(tmp_path / "run")
    out = policy.infer(
        Observation(images={"primary": np.zeros((16, 16, 3), np.uint8)}, state=np.zeros(3), prompt="push"), seed=0
    )
    assert np.isfinite(out["actions"]).all()


@pytest.mark.slow  # inductor compiles forward and backward of the tiniest model: ~70 s cold on 2 CPU cores
def test_compile_first_step_loss_matches_eager(parquet_data, tiny_checkpoint_dir, fp32_run, tmp_path) -> None:
    Trainer(_config(parquet_data, tiny_checkpoint_dir, tmp_path / "run", compile=True, n_updates=2)).run()
    losses, reference = _losses(tmp_path / "run"), _losses(fp32_run)
    # Same weights, batch, noise and times; inductor only fuses and reorders fp32 arithmetic (different
    # summation order): differences of a few fp32 ulps per op, far below 1e-4 relative on a loss of O(1).
    assert losses[1] == pytest.approx(reference[1], rel=1e-4)
    assert math.isfinite(losses[2])
