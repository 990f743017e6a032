"""Optimizer groups, AdamW / AdamW8bit training, gradient clipping, learning-rate schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.optim import OptimizerConfig, clip_gradients, freeze_parameters, make_optimizer, parameter_groups
from pg_vla.training.schedules import ScheduleConfig, lr_factor, make_scheduler

VLM = ("vision_tower.", "multi_modal_projector.", "joint.experts.vlm.")
ACTION = ("joint.experts.action.", "proprio_encoder.", "action_encoder.", "action_decoder.")


def hc(x: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * x))


# ---- schedules ---------------------------------------------------------------------------------------
def test_constant_with_warmup():
    cfg = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [lr_factor(s, cfg) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lr_factor(10_000, cfg) == 1.0
    assert lr_factor(0, ScheduleConfig(kind="constant", warmup_steps=0)) == 1.0


def test_cosine():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, total_steps=110)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(35, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, cfg) == pytest.approx(0.0, abs=1e-12)
    floored = ScheduleConfig(kind="cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_factor(60, floored) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(85, floored) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(110, floored) == pytest.approx(0.1)
    assert lr_factor(1000, floored) == pytest.approx(0.1)
    assert lr_factor(4, floored) == pytest.approx(0.5)  # warmup is not floored


def test_cosine_restarts_boundaries_and_decay():
    cfg = ScheduleConfig(kind="cosine_restarts", warmup_steps=0, cycle_steps=10, restart_decay=0.5)
    assert lr_factor(0, cfg) == pytest.approx(1.0)
    assert lr_factor(5, cfg) == pytest.approx(0.5)
    assert lr_factor(9, cfg) == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
    assert lr_factor(10, cfg) == pytest.approx(0.5)  # restart at half the peak
    assert lr_factor(15, cfg) == pytest.approx(0.25)
    assert lr_factor(20, cfg) == pytest.approx(0.25)
    assert lr_factor(32, cfg) == pytest.approx(0.125 * 0.5 * (1 + math.cos(0.2 * math.pi)))


def test_cosine_restarts_cycle_mult_and_warmup():
    # cycles after 5 warmup steps: [0, 10), [10, 30), [30, 70), ...
    cfg = ScheduleConfig(kind="cosine_restarts", warmup_steps=5, cycle_steps=10, cycle_mult=2.0)
    assert lr_factor(2, cfg) == pytest.approx(0.6)
    assert lr_factor(5, cfg) == pytest.approx(1.0)
    assert lr_factor(14, cfg) == pytest.approx(hc(0.9))
    assert lr_factor(15, cfg) == pytest.approx(1.0)
    assert lr_factor(25, cfg) == pytest.approx(0.5)
    assert lr_factor(34, cfg) == pytest.approx(hc(19 / 20))
    assert lr_factor(35, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5)
    assert lr_factor(75, cfg) == pytest.approx(1.0)
    # fractional cycle lengths: 4, 6, 9 -> boundaries at 4, 10, 19
    frac = ScheduleConfig(kind="cosine_restarts", warmup_steps=0, cycle_steps=4, cycle_mult=1.5)
    assert lr_factor(9, frac) == pytest.approx(hc(5 / 6))
    assert lr_factor(10, frac) == pytest.approx(1.0)
    assert lr_factor(18, frac) == pytest.approx(hc(8 / 9))
    assert lr_factor(19, frac) == pytest.approx(1.0)


def test_cosine_restarts_min_lr_ratio():
    cfg = ScheduleConfig(kind="cosine_restarts", warmup_steps=0, cycle_steps=10, restart_decay=0.5, min_lr_ratio=0.2)
    assert lr_factor(0, cfg) == pytest.approx(1.0)
    assert lr_factor(5, cfg) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_factor(25, cfg) == pytest.approx(0.2 + 0.05 * 0.5)  # cycle 2 peaks at 0.25
    assert lr_factor(30, cfg) == pytest.approx(0.2)  # cycle 3 would peak at 0.125 < floor: flat at the floor
    assert lr_factor(35, cfg) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="linear"),
        dict(kind="cosine", total_steps=None),
        dict(kind="cosine", warmup_steps=10, total_steps=10),
        dict(kind="cosine_restarts", cycle_steps=None),
        dict(kind="cosine_restarts", cycle_steps=0),
        dict(kind="constant", warmup_steps=-1),
        dict(kind="constant", min_lr_ratio=1.5),
        dict(kind="cosine_restarts", cycle_steps=10, cycle_mult=0.5),
        dict(kind="cosine_restarts", cycle_steps=10, restart_decay=0.0),
    ],
)
def test_schedule_config_validation(kwargs):
    with pytest.raises(ValueError):
        ScheduleConfig(**kwargs)


def _toy_optimizer():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4}])


def test_scheduler_per_group_lr_and_resume():
    cfg = ScheduleConfig(
        kind="cosine_restarts", warmup_steps=3, cycle_steps=5, cycle_mult=2.0, restart_decay=0.7, min_lr_ratio=0.05
    )
    opt = _toy_optimizer()
    sched = make_scheduler(opt, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 3, 1e-4 / 3])
    for _ in range(7):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * lr_factor(7, cfg), 1e-4 * lr_factor(7, cfg)])
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    resumed_opt = _toy_optimizer()
    resumed = make_scheduler(resumed_opt, cfg)
    resumed_opt.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    original, restored = [], []
    for _ in range(20):
        opt.step()
        sched.step()
        resumed_opt.step()
        resumed.step()
        original.append([g["lr"] for g in opt.param_groups])
        restored.append([g["lr"] for g in resumed_opt.param_groups])
    assert original == restored
    assert original[-1] == pytest.approx([1e-3 * lr_factor(27, cfg), 1e-4 * lr_factor(27, cfg)])


# ---- parameter groups --------------------------------------------------------------------------------
def tiny_model(seed: int = 0) -> PiZero:
    torch.manual_seed(seed)
    return PiZero(PiZeroConfig.preset("tiny"))


def _group_names(model, groups) -> dict[str, set[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups}


def test_parameter_groups_membership():
    model = tiny_model()
    cfg = OptimizerConfig(vlm_lr=1e-4, action_expert_lr=3e-4, vlm_weight_decay=0.01, action_expert_weight_decay=0.1)
    frozen = freeze_parameters(model, cfg.train_vlm)
    assert set(frozen) == set(model.frozen_parameter_names())
    groups = parameter_groups(model, cfg)
    names = _group_names(model, groups)
    assert set(names) == {"vlm_decay", "vlm_no_decay", "action_expert_decay", "action_expert_no_decay"}
    listed = [n for members in names.values() for n in members]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(listed) == len(set(listed)) and set(listed) == trainable  # every trainable parameter exactly once
    assert not set(listed) & set(model.frozen_parameter_names())
    assert "joint.experts.vlm.embed_tokens.weight" not in listed
    for group in groups:
        for n in names[group["name"]]:
            assert n.startswith(VLM if group["name"].startswith("vlm") else ACTION)
    expected_no_decay = {
        "vision_tower.embeddings.patch_embedding.bias",
        "vision_tower.embeddings.position_embedding.weight",
        "vision_tower.post_layernorm.weight",
        "multi_modal_projector.bias",
        "joint.experts.vlm.layers.0.input_layernorm.weight",
    }
    assert expected_no_decay <= names["vlm_no_decay"]
    assert {
        "vision_tower.embeddings.patch_embedding.weight",
        "multi_modal_projector.weight",
        "joint.experts.vlm.layers.0.mlp.down_proj.weight",
    } <= names["vlm_decay"]
    assert {"joint.experts.action.norm.weight", "action_decoder.bias", "proprio_encoder.bias"} <= names[
        "action_expert_no_decay"
    ]
    assert {
        "action_decoder.weight",
        "joint.experts.action.layers.1.self_attn.q_proj.weight",
        "action_encoder.time_mlp_in.weight",
    } <= names["action_expert_decay"]
    params = dict(model.named_parameters())
    for group in ("vlm_decay", "action_expert_decay"):
        assert all(params[n].ndim >= 2 for n in names[group])
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert settings == {
        "vlm_decay": (1e-4, 0.01),
        "vlm_no_decay": (1e-4, 0.0),
        "action_expert_decay": (3e-4, 0.1),
        "action_expert_no_decay": (3e-4, 0.0),
    }
    opt = make_optimizer(model, cfg)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups} == settings


def test_parameter_groups_action_expert_only():
    model = tiny_model()
    cfg = OptimizerConfig(train_vlm=False, action_expert_lr=2e-4)
    opt = make_optimizer(model, cfg)
    names = _group_names(model, opt.param_groups)
    assert set(names) == {"action_expert_decay", "action_expert_no_decay"}
    listed = set().union(*names.values())
    assert listed == {n for n, _ in model.named_parameters() if n.startswith(ACTION)}
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(VLM))
    assert all(g["lr"] == 2e-4 for g in opt.param_groups)


def test_parameter_groups_with_lora_wrapping():
    peft = pytest.importorskip("peft")
    model = tiny_model()
    lora = peft.LoraConfig(r=4, target_modules=r"joint\.experts\.vlm\.layers\.\d+\.self_attn\.(q|v)_proj")
    wrapped = peft.get_peft_model(model, lora)
    frozen = freeze_parameters(wrapped, train_vlm=True)
    last_q = "base_model.model.joint.experts.vlm.layers.1.self_attn.q_proj."
    assert last_q + "lora_A.default.weight" in frozen  # an adapter on a module no action output reads
    groups = parameter_groups(wrapped, OptimizerConfig())
    names = _group_names(wrapped, groups)
    assert set(names) == {"vlm_decay"}  # peft froze everything else
    assert names["vlm_decay"] == {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert len(names["vlm_decay"]) == 6 and all(".lora_" in n for n in names["vlm_decay"])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="sgd"),
        dict(vlm_lr=0.0),
        dict(action_expert_lr=-1.0),
        dict(vlm_weight_decay=-0.1),
        dict(betas=(0.9,)),
        dict(betas=(0.9, 1.0)),
        dict(eps=0.0),
        dict(grad_clip_norm=0.0),
        dict(train_vlm="no"),
    ],
)
def test_optimizer_config_validation(kwargs):
    with pytest.raises(ValueError):
        OptimizerConfig(**kwargs)


# ---- training ----------------------------------------------------------------------------------------
def fixed_batch(cfg: PiZeroConfig, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    size = cfg.vision.image_size
    images = torch.rand(batch, cfg.num_views, 3, size, size, generator=gen) * 2 - 1
    text_ids = torch.randint(4, cfg.vlm.vocab_size - 1, (batch, cfg.max_text_tokens), generator=gen)
    text_mask = torch.ones_like(text_ids, dtype=torch.bool)
    proprio = torch.rand(batch, cfg.cond_steps, cfg.proprio_dim, generator=gen) * 2 - 1
    actions = torch.rand(batch, cfg.horizon_steps, cfg.action_dim, generator=gen) * 2 - 1
    noise = torch.randn(batch, cfg.horizon_steps, cfg.action_dim, generator=gen)
    time = torch.rand(batch, generator=gen) * 0.9 + 0.05
    return images, text_ids, text_mask, proprio, actions, noise, time


@pytest.fixture
def one_thread():
    """The tiny model's matrices are small: one CPU thread is faster and unaffected by other load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_optimizer_fits_a_fixed_batch(name, one_thread):
    model = tiny_model(seed=0)
    cfg = OptimizerConfig(name=name, vlm_lr=3e-3, action_expert_lr=3e-3, vlm_weight_decay=0.01)
    opt = make_optimizer(model, cfg)
    images, text_ids, text_mask, proprio, actions, noise, time = fixed_batch(model.config)
    losses = []
    for _ in range(40):
        loss = model(images, text_ids, text_mask, proprio, actions, noise=noise, time=time)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, cfg.grad_clip_norm)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    big = [p for g in opt.param_groups for p in g["params"] if p.numel() >= 4096]
    small = [p for g in opt.param_groups for p in g["params"] if p.numel() < 4096]
    assert big and small
    for p in big:
        moments = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
        assert len(moments) == 2
        expected = torch.uint8 if name == "adamw8bit" else torch.float32
        assert all(v.dtype == expected for v in moments), {k: v.dtype for k, v in opt.state[p].items()}
    if name == "adamw8bit":  # small tensors keep 32-bit state
        p = small[0]
        assert all(v.dtype == torch.float32 for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)


# ---- optimizer offload -------------------------------------------------------------------------------
def _seeded_grads(model, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_offloaded_optimizer_takes_the_same_steps(name, dtype, one_thread):
    """optimizer.offload=true updates host copies (distinct tensors, fp32 masters for bf16 weights) and writes
    them back: after 4 steps of the same gradients the weights equal the plain optimizer's (for bf16 weights:
    the fp32-master optimizer's) exactly, and a state round trip continues exactly like the original."""
    from dataclasses import replace

    from pg_vla.training.optim import MasterWeightOptimizer

    cfg = OptimizerConfig(name=name, vlm_lr=3e-3, action_expert_lr=1e-3, vlm_weight_decay=0.01)
    ref, off, resumed = (tiny_model(0).to(dtype) for _ in range(3))
    opt_ref, opt_off = make_optimizer(ref, cfg), make_optimizer(off, replace(cfg, offload=True))
    assert isinstance(opt_off, MasterWeightOptimizer) and opt_off.offload
    for step in range(4):
        for model, opt in ((ref, opt_ref), (off, opt_off)):
            _seeded_grads(model, step)
            opt.step()
            opt.zero_grad(set_to_none=True)
    managed = opt_off.managed()
    assert len(managed) == sum(1 for p in off.parameters() if p.requires_grad)
    for p in managed:
        host = opt_off.master(p)
        assert host.device.type == "cpu" and host.dtype == torch.float32 and host.data_ptr() != p.data_ptr()
    for (name_, a), b in zip(ref.named_parameters(), off.parameters()):
        assert torch.equal(a, b), name_
    # a checkpoint round trip of the offloaded state, then 2 more steps on both
    resumed.load_state_dict(off.state_dict())
    opt_resumed = make_optimizer(resumed, replace(cfg, offload=True))
    opt_resumed.load_state_dict(copy.deepcopy(opt_off.state_dict()))  # as a checkpoint would: no shared tensors
    for step in range(4, 6):
        for model, opt in ((off, opt_off), (resumed, opt_resumed)):
            _seeded_grads(model, step)
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name_, a), b in zip(off.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name_


# ---- gradient clipping -------------------------------------------------------------------------------
def test_clip_gradients():
    a = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(3))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient: ignored
    a.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    b.grad = torch.tensor([12.0, 0.0, 0.0])
    expected = math.sqrt(9.0 + 16.0 + 144.0)  # 13
    assert clip_gradients([a, b, c], None) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(b.grad, torch.tensor([12.0, 0.0, 0.0]))  # measuring leaves gradients alone
    assert clip_gradients([a, b, c], 100.0) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(b.grad, torch.tensor([12.0, 0.0, 0.0]))  # below the limit: unchanged
    norm = clip_gradients([a, b, c], 6.5)
    assert isinstance(norm, float) and norm == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(a.grad, torch.tensor([[1.5, 0.0], [0.0, 2.0]]), rtol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([6.0, 0.0, 0.0]), rtol=1e-5)
    assert clip_gradients([c], 1.0) == 0.0

    model = torch.nn.Linear(3, 2)
    gen = torch.Generator().manual_seed(0)
    model.weight.grad = torch.randn(2, 3, generator=gen)
    model.bias.grad = torch.randn(2, generator=gen)
    hand = math.sqrt(sum(float(v) ** 2 for g in (model.weight.grad, model.bias.grad) for v in g.double().flatten()))
    assert clip_gradients(model, None) == pytest.approx(hand, rel=1e-6)
    assert clip_gradients(model, hand / 4) == pytest.approx(hand, rel=1e-6)
    assert clip_gradients(model, None) == pytest.approx(hand / 4, rel=1e-5)
