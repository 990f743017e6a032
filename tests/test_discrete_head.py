"""The discrete action head: binning against numpy, loss and decoding references, the model switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pg_vla.model.checkpoint import load_model, save_model
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.discrete_head import actions_to_bins, binned_cross_entropy, bins_to_actions, decode_logits
from pg_vla.model.vla.pizero import PiZero

torch.set_num_threads(1)

EXACT = 1e-6  # float32 arithmetic on values of order 1


def discrete_config(**overrides) -> PiZeroConfig:
    base = {"action_head": "discrete", "num_action_bins": 64, "discrete_mlp_hidden_dims": (64,)}
    return PiZeroConfig.preset("tiny", **{**base, **overrides})


def make_inputs(cfg: PiZeroConfig, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    images = torch.rand(batch, cfg.num_views, 3, size, size, generator=gen) * 2 - 1
    text_ids = torch.randint(4, cfg.vlm.vocab_size, (batch, cfg.max_text_tokens), generator=gen)
    lengths = torch.tensor([cfg.max_text_tokens - (i % 3) for i in range(batch)])
    text_mask = torch.arange(cfg.max_text_tokens)[None] < lengths[:, None]
    text_ids = text_ids.masked_fill(~text_mask, cfg.pad_token_id)
    proprio = torch.rand(batch, cfg.cond_steps, cfg.proprio_dim, generator=gen) * 2 - 1
    actions = torch.rand(batch, cfg.horizon_steps, cfg.action_dim, generator=gen) * 2 - 1
    return images, text_ids, text_mask, proprio, actions


# ---- binning ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low, high, bins", [(-1.0, 1.0, 256), (-2.0, 3.0, 7), (0.0, 1.0, 2)])
def test_binning_round_trip_within_half_a_bin(low, high, bins):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(low, high, 2000), [low, high, (low + high) / 2]])
    width = (high - low) / bins
    expected_bins = np.clip(np.floor((values - low) / width), 0, bins - 1).astype(np.int64)  # numpy reference
    got = actions_to_bins(torch.from_numpy(values), low, high, bins).numpy()
    np.testing.assert_array_equal(got, expected_bins)
    centers = low + (expected_bins + 0.5) * width
    decoded = bins_to_actions(torch.from_numpy(got), low, high, bins).double().numpy()
    np.testing.assert_allclose(decoded, centers, atol=EXACT)
    assert np.abs(decoded - values).max() <= width / 2 + EXACT
    # out of range: the edge bins
    outside = actions_to_bins(torch.tensor([low - 5.0, high + 5.0]), low, high, bins).tolist()
    assert outside == [0, bins - 1]


def test_decoding_and_loss_match_numpy():
    rng = np.random.default_rng(1)
    b, h, a, k = 2, 3, 2, 5
    logits = rng.normal(size=(b, h, a, k)).astype(np.float32)
    centers = -1 + (np.arange(k) + 0.5) * 2 / k
    argmax = decode_logits(torch.from_numpy(logits), -1.0, 1.0, "argmax").numpy()
    np.testing.assert_allclose(argmax, centers[logits.argmax(-1)], atol=EXACT)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = decode_logits(torch.from_numpy(logits), -1.0, 1.0, "expected").numpy()
    np.testing.assert_allclose(expected, (probs * centers).sum(-1), atol=1e-5)

    targets = rng.integers(0, k, size=(b, h, a))
    mask = np.array([[True, True, False], [True, False, False]])
    nll = -np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0])  # (B, H, A)
    reference = nll[mask].mean()  # every dimension of the valid steps
    loss = binned_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(mask))
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    assert binned_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), None).item() == pytest.approx(
        nll.mean(), rel=1e-5
    )


def test_config_validation_and_json_round_trip():
    cfg = discrete_config(action_bounds=[-0.5, 0.5], discrete_mlp_hidden_dims=[16, 8])
    assert cfg.action_bounds == (-0.5, 0.5) and cfg.discrete_mlp_hidden_dims == (16, 8)
    again = PiZeroConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert PiZeroConfig().action_head == "flow"
    for bad, match in (
        ({"action_head": "bins"}, "action_head"),
        ({"num_action_bins": 1}, "num_action_bins"),
        ({"action_bounds": (1.0, -1.0)}, "action_bounds"),
        ({"discrete_decoding": "mode"}, "decoding"),
        ({"discrete_dropout": 1.0}, "discrete_dropout"),
        ({"freeze_vision": "yes"}, "freeze_vision"),
    ):
        with pytest.raises(ValueError, match=match):
            discrete_config(**bad)


# ---- the model ------------------------------------------------------------------------------------------
def test_discrete_model_has_no_action_expert_and_every_trained_parameter_gets_gradient():
    torch.manual_seed(0)
    cfg = discrete_config(freeze_vision=True)
    model = PiZero(cfg)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("joint.experts.action.", "proprio_encoder.", "action_encoder.")) for n in names)
    assert all(
        n.startswith(("vision_tower.", "multi_modal_projector.", "joint.experts.vlm.", "action_decoder."))
        for n in names
    )
    frozen = set(model.frozen_parameter_names())
    vision = {n for n in names if n.startswith("vision_tower.")}
    assert frozen == vision | {"joint.experts.vlm.embed_tokens.weight"}
    counts = model.parameter_counts()
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("action_decoder."))
    assert counts["action_expert"] == head and counts["total"] == sum(p.numel() for p in model.parameters())
    # DDP needs every parameter that trains to take part in the loss
    images, text_ids, text_mask, proprio, actions = make_inputs(cfg, 3)
    model(images, text_ids, text_mask, proprio, actions).backward()
    for name, p in model.named_parameters():
        if name not in frozen:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(RuntimeError, match="action_head='flow'"):
        model.encode_prefix(images, text_ids, text_mask, proprio)


def test_freeze_vision_for_the_flow_head():
    with torch.device("meta"):
        plain = PiZero(PiZeroConfig.preset("tiny"))
        frozen_vision = PiZero(PiZeroConfig.preset("tiny", freeze_vision=True))
    vision = {n for n, _ in plain.named_parameters() if n.startswith("vision_tower.")}
    assert set(frozen_vision.frozen_parameter_names()) == set(plain.frozen_parameter_names()) | vision


@torch.no_grad()
def test_sample_actions_decodes_the_bin_logits_and_padding_is_invisible():
    torch.manual_seed(0)
    cfg = discrete_config(discrete_decoding="expected")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _ = make_inputs(cfg, 3)
    logits = model.bin_logits(images, text_ids, text_mask, proprio)
    assert logits.shape == (3, cfg.horizon_steps, cfg.action_dim, cfg.num_action_bins)
    centers = -1 + (np.arange(cfg.num_action_bins) + 0.5) * 2 / cfg.num_action_bins
    probs = torch.softmax(logits, -1).double().numpy()
    noise = torch.randn(3, cfg.horizon_steps, cfg.action_dim)
    sampled = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise, num_steps=3)
    np.testing.assert_allclose(sampled.numpy(), (probs * centers).sum(-1), atol=1e-5)
    assert torch.equal(sampled, model.sample_actions(images, text_ids, text_mask, proprio))  # no randomness
    # what sits in the text padding is never read
    other = text_ids.masked_fill(~text_mask, 7)
    assert torch.allclose(model.bin_logits(images, other, text_mask, proprio), logits, atol=1e-5)
    # the proprio matters when the head reads it, and not otherwise
    assert not torch.allclose(model.bin_logits(images, text_ids, text_mask, -proprio), logits, atol=1e-4)
    blind = PiZero(discrete_config(discrete_use_proprio=False)).eval()
    assert torch.equal(
        blind.bin_logits(images, text_ids, text_mask, proprio), blind.bin_logits(images, text_ids, text_mask, -proprio)
    )


@torch.no_grad()
def test_checkpoint_round_trip_keeps_the_head(tmp_path):
    torch.manual_seed(0)
    cfg = discrete_config(num_action_bins=32, action_bounds=(-2.0, 2.0))
    model = PiZero(cfg).eval()
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.is_discrete
    images, text_ids, text_mask, proprio, _ = make_inputs(cfg, 2)
    assert torch.equal(
        loaded.bin_logits(images, text_ids, text_mask, proprio), model.bin_logits(images, text_ids, text_mask, proprio)
    )


def test_tiny_discrete_model_overfits_a_batch():
    """Bin accuracy over a fixed batch > 95% within a few hundred steps (cross-entropy, AdamW)."""
    torch.manual_seed(0)
    cfg = discrete_config(num_action_bins=256, discrete_mlp_hidden_dims=(128,), discrete_use_proprio=False)
    model = PiZero(cfg)
    images, text_ids, text_mask, proprio, actions = make_inputs(cfg, 4, seed=3)
    mask = torch.ones(4, cfg.horizon_steps, dtype=torch.bool)
    mask[0, -1] = False  # a padded step does not count
    target = actions_to_bins(actions, -1.0, 1.0, cfg.num_action_bins)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for step in range(300):
        loss = model(images, text_ids, text_mask, proprio, actions, action_mask=mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            with torch.no_grad():
                predicted = model.bin_logits(images, text_ids, text_mask, proprio).argmax(-1)
            accuracy = (predicted == target)[mask].float().mean().item()
            if accuracy > 0.95:
                break
    assert accuracy > 0.95, f"bin accuracy {accuracy:.3f} after {step + 1} steps, loss {loss.item():.3f}"
    decoded = model.eval().sample_actions(images, text_ids, text_mask, proprio)
    width = 2 / cfg.num_action_bins
    hits = ((decoded - actions).abs() <= width / 2 + EXACT).all(-1)[mask].float().mean().item()
    assert hits > 0.8  # decoded steps land within half a bin of the truth
