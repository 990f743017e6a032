"""The joint pi0 model: block mask, KV-cached sampling, flow-matching training, parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import numpy as np

from pg_vla.model.vla.attention_mask import block_attention_mask, mask_and_positions, positions_from_valid
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

ROOT = Path(__file__).resolve().parents[1]
CACHE_ATOL = 1e-5  # float32, cached vs uncached sampling


def make_batch(cfg: PiZeroConfig, batch: int = 2, seed: int = 0, text_lengths: tuple[int, ...] | None = None):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    images = torch.rand(batch, cfg.num_views, 3, size, size, generator=gen) * 2 - 1
    text_ids = torch.randint(4, cfg.vlm.vocab_size, (batch, cfg.max_text_tokens), generator=gen)
    lengths = text_lengths or tuple(cfg.max_text_tokens - i for i in range(batch))
    text_mask = torch.arange(cfg.max_text_tokens)[None, :] < torch.tensor(lengths)[:, None]
    text_ids = text_ids.masked_fill(~text_mask, cfg.pad_token_id)
    proprio = torch.rand(batch, cfg.cond_steps, cfg.proprio_dim, generator=gen) * 2 - 1
    actions = torch.rand(batch, cfg.horizon_steps, cfg.action_dim, generator=gen) * 2 - 1
    noise = torch.randn(batch, cfg.horizon_steps, cfg.action_dim, generator=gen)
    return images, text_ids, text_mask, proprio, actions, noise


def test_block_mask_every_block_pair():
    """Hand-written mask for [img img | txt txt pad | prop prop | act act]."""
    names = ["img", "img", "txt", "txt", "pad", "prop", "prop", "act", "act"]
    blocks = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2]])
    valid = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    may_attend = {  # query kind -> key kinds it may read
        "img": {"img", "txt"},
        "txt": {"img", "txt"},
        "pad": {"img", "txt"},
        "prop": {"img", "txt", "prop"},
        "act": {"img", "txt", "prop", "act"},
    }
    expected = torch.tensor([[k in may_attend[q] for k in names] for q in names])
    mask = block_attention_mask(blocks, blocks, valid)
    assert mask.shape == (1, 1, 9, 9)
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(positions_from_valid(valid)[0], torch.tensor([0, 1, 2, 3, 3, 4, 5, 6, 7]))


def numpy_mask_and_positions(valid: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule written out per entry: (B, T) -> mask (B, T, T), positions (B, T)."""
    b, t = valid.shape
    mask = np.zeros((b, t, t), dtype=bool)
    positions = np.zeros((b, t), dtype=np.int64)
    for n in range(b):
        count = 0
        for i in range(t):
            mask[n, i] = [valid[n, j] and blocks[n, j] <= blocks[n, i] for j in range(t)]
            count += int(valid[n, i])
            positions[n, i] = max(count - 1, 0)
    return mask, positions


def test_mask_and_positions_match_a_numpy_construction_with_and_without_a_cache():
    gen = np.random.default_rng(0)
    valid = gen.random((3, 11)) < 0.7
    valid[:, 0] = True
    blocks = np.sort(gen.integers(0, 4, (3, 11)), axis=1)
    mask, positions = mask_and_positions(torch.from_numpy(valid), torch.from_numpy(blocks))
    want_mask, want_positions = numpy_mask_and_positions(valid, blocks)
    assert mask.shape == (3, 1, 11, 11) and mask.dtype == torch.bool
    assert np.array_equal(mask[:, 0].numpy(), want_mask)
    assert np.array_equal(positions.numpy(), want_positions)
    # the last 4 tokens as new queries against the first 7 as cached keys: the full mask's bottom rows
    split = 7
    mask, positions = mask_and_positions(
        torch.from_numpy(valid[:, split:]),
        torch.from_numpy(blocks[:, split:]),
        torch.from_numpy(valid[:, :split]),
        torch.from_numpy(blocks[:, :split]),
    )
    assert np.array_equal(mask[:, 0].numpy(), want_mask[:, split:])
    assert np.array_equal(positions.numpy(), want_positions[:, split:])


@pytest.mark.parametrize("time_conditioning", ["mlp", "adaln"])
def test_embed_prefix_and_suffix_valid_and_blocks(time_conditioning):
    """[2 frames x 2 cameras x P patches | 4 text, the second sample padded after 2] [proprio x2] [actions x3]."""
    cfg = PiZeroConfig.preset(
        "tiny", num_cameras=2, max_text_tokens=4, cond_steps=2, horizon_steps=3, time_conditioning=time_conditioning
    )
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, actions, _ = make_batch(cfg, batch=2, text_lengths=(4, 2))
    patches = cfg.vision.num_patches
    assert cfg.num_views == 4 and cfg.num_image_tokens == 4 * patches
    with torch.no_grad():
        tokens, valid, blocks = model.embed_prefix(images, text_ids, text_mask)
        assert tokens.shape == (2, 4 * patches + 4, cfg.vlm.hidden_size)
        assert valid.tolist() == [[True] * (4 * patches + 4), [True] * (4 * patches + 2) + [False] * 2]
        assert blocks.tolist() == [[0] * (4 * patches + 4)] * 2
        # the first frame absent in sample 0 (an episode start), the second camera absent in sample 1
        image_mask = torch.tensor([[False, False, True, True], [True, False, True, False]])
        _, masked, _ = model.embed_prefix(images, text_ids, text_mask, image_mask=image_mask)
        views = [[flag for flag in row for _ in range(patches)] for row in image_mask.tolist()]
        assert masked.tolist() == [views[0] + [True] * 4, views[1] + [True] * 2 + [False] * 2]
        t = torch.tensor([0.2, 0.9])
        segments, valid, blocks = model.embed_suffix(proprio, actions, t, tokens.dtype)
        assert valid.tolist() == [[True] * 5] * 2 and blocks.tolist() == [[1, 1, 2, 2, 2]] * 2
        assert all(s.expert == "action" for s in segments)
        if time_conditioning == "mlp":  # pi0: one segment, the time is inside the action tokens
            assert [s.hidden.shape[1] for s in segments] == [5] and segments[0].cond is None
        else:  # adaLN: proprio tokens unconditioned, action tokens conditioned on the time
            assert [s.hidden.shape[1] for s in segments] == [2, 3]
            assert segments[0].cond is None and segments[1].cond.shape == (2, cfg.action_expert.hidden_size)
        segments, valid, blocks = model.embed_suffix(proprio, None, None, tokens.dtype)  # the cached prefix's part
        assert [s.hidden.shape[1] for s in segments] == [2] and blocks.tolist() == [[1, 1]] * 2
        segments, valid, blocks = model.embed_suffix(None, actions, t, tokens.dtype)  # one denoising step's part
        assert [s.hidden.shape[1] for s in segments] == [3] and blocks.tolist() == [[2, 2, 2]] * 2


@pytest.mark.parametrize("action_head", ["flow", "discrete"])
def test_the_head_adds_its_modules_under_the_checkpoint_names(action_head):
    with torch.device("meta"):
        model = PiZero(PiZeroConfig.preset("tiny", action_head=action_head))
    names = list(model.state_dict())
    flow = action_head == "flow"
    assert model.head.name == action_head and model.is_discrete == (not flow)
    assert {n.split(".")[0] for n in names} == {
        "vision_tower",
        "multi_modal_projector",
        "joint",
        "action_decoder",
        *(("proprio_encoder", "action_encoder") if flow else ()),
    }
    experts = {n.split(".")[2] for n in names if n.startswith("joint.experts.")}
    assert experts == ({"vlm", "action"} if flow else {"vlm"})


@pytest.mark.parametrize("time_conditioning", ["mlp", "adaln", "adaln_zero"])
def test_cached_sampling_equals_uncached(time_conditioning):
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", num_cameras=2, cond_steps=2, horizon_steps=5, time_conditioning=time_conditioning)
    model = PiZero(cfg).eval()
    if time_conditioning != "mlp":  # give the zero-initialised modulations something to do
        for name, p in model.named_parameters():
            if "modulation" in name:
                torch.nn.init.normal_(p, std=0.05)
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg, batch=3)
    cached = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise, use_cache=True)
    uncached = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise, use_cache=False)
    assert cached.shape == (3, 5, cfg.action_dim)
    assert (cached - uncached).abs().max().item() <= CACHE_ATOL
    # the velocity itself (no clipping) agrees too
    t = torch.full((3,), 0.7)
    prefix = model.encode_prefix(images, text_ids, text_mask, proprio)
    v_cached = model.denoise_step(prefix, noise, t)
    v_full = model.predict_velocity(images, text_ids, text_mask, proprio, noise, t)
    assert (v_cached - v_full).abs().max().item() <= CACHE_ATOL
    assert v_full.abs().max() > 1e-3


def test_padding_is_invisible_and_observations_matter():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg, text_lengths=(4, 6))
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        base = model.predict_velocity(images, text_ids, text_mask, proprio, noise, t)
        other_pad = text_ids.masked_fill(~text_mask, 7)  # change only padding tokens
        assert torch.equal(model.predict_velocity(images, other_pad, text_mask, proprio, noise, t), base)
        for changed in (
            (images.flip(-1), text_ids, proprio),
            (images, text_ids.masked_fill(text_mask & (torch.arange(cfg.max_text_tokens) == 2), 9), proprio),
            (images, text_ids, -proprio),
        ):
            out = model.predict_velocity(changed[0], changed[1], text_mask, changed[2], noise, t)
            assert (out - base).abs().max() > 1e-6


@torch.no_grad()
def test_a_model_without_proprio_never_reads_it_and_its_checkpoint_keeps_that(tmp_path):
    """use_proprio=False: velocities and sampled chunks are the same for any proprio (also any non-finite
    one), the images still matter, and the flag survives a checkpoint round trip."""
    from pg_vla.model.checkpoint import load_model, save_model

    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    cfg.use_proprio = False
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg)
    t = torch.full((2,), 0.5)
    base = model.predict_velocity(images, text_ids, text_mask, proprio, noise, t)
    for other in (-proprio, proprio * 100, torch.zeros_like(proprio)):
        assert torch.equal(model.predict_velocity(images, text_ids, text_mask, other, noise, t), base)
    assert (model.predict_velocity(images.flip(-1), text_ids, text_mask, proprio, noise, t) - base).abs().max() > 1e-6
    sampled = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise)
    assert torch.equal(model.sample_actions(images, text_ids, text_mask, -proprio, noise=noise), sampled)
    loaded = load_model(save_model(model, tmp_path / "model.safetensors"))
    assert loaded.config.use_proprio is False
    assert torch.equal(loaded.predict_velocity(images, text_ids, text_mask, -proprio, noise, t), base)
    with pytest.raises(ValueError, match="use_proprio must be a bool"):
        PiZeroConfig(use_proprio="no")


@torch.no_grad()
def test_proprio_dropout_zeroes_whole_samples_in_training_only():
    """proprio_dropout=0.5: each training loss of one sample is either its loss with the true proprio or
    with zeros (the two computed in eval mode), each about half the time; eval mode never drops."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    cfg.proprio_dropout = 0.5
    model = PiZero(cfg)
    images, text_ids, text_mask, proprio, actions, noise = (x[:1] for x in make_batch(cfg))
    t = torch.full((1,), 0.5)
    args = (images, text_ids, text_mask)
    model.eval()
    kept = model(*args, proprio, actions, noise, t).item()
    zeroed = model(*args, torch.zeros_like(proprio), actions, noise, t).item()
    assert abs(kept - zeroed) > 1e-4
    assert model(*args, proprio, actions, noise, t).item() == kept
    model.train()
    draws = [model(*args, proprio, actions, noise, t).item() for _ in range(200)]
    n_zeroed = sum(abs(d - zeroed) < 1e-5 for d in draws)
    assert sum(abs(d - kept) < 1e-5 for d in draws) + n_zeroed == 200
    assert 70 <= n_zeroed <= 130  # binomial(200, 0.5): 100 +- 30 is beyond 4 standard deviations
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="proprio_dropout must be in"):
            PiZeroConfig(proprio_dropout=bad)


def test_first_action_tokens_do_not_see_later_blocks():
    """Proprio outputs cannot depend on actions: the prefix cache is computed without them."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg)
    with torch.no_grad():
        a = model.encode_prefix(images, text_ids, text_mask, proprio)
        b = model.encode_prefix(images, text_ids, text_mask, proprio)
    for k1, k2 in zip(a.kv.keys, b.kv.keys):
        assert torch.equal(k1, k2)
    assert a.kv.length == cfg.prefix_len + cfg.cond_steps


@pytest.mark.parametrize("time_conditioning", ["mlp", "adaln_zero"])
def test_training_overfits_a_fixed_batch_and_reaches_both_experts(time_conditioning):
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", time_conditioning=time_conditioning)
    model = PiZero(cfg).train()
    frozen = set(model.frozen_parameter_names())
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    images, text_ids, text_mask, proprio, actions, noise = make_batch(cfg, batch=4)
    time = torch.tensor([0.2, 0.5, 0.8, 0.95])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(60):
        loss = model(images, text_ids, text_mask, proprio, actions, noise=noise, time=time)
        optimizer.zero_grad()
        loss.backward()
        if step == 59:  # checked late: adaLN-Zero's gates start closed, so early on only the gates learn
            grads = {n: p.grad for n, p in model.named_parameters()}
            last = f"joint.experts.vlm.layers.{cfg.vlm.num_layers - 1}."
            assert grads["joint.experts.vlm.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
            assert grads["vision_tower.encoder.layers.0.mlp.fc1.weight"].abs().sum() > 0
            assert grads[last + "self_attn.v_proj.weight"].abs().sum() > 0  # action tokens read last VLM values
            assert grads[last + "self_attn.k_proj.weight"].abs().sum() > 0
            assert grads["joint.experts.action.layers.0.mlp.down_proj.weight"].abs().sum() > 0
            assert grads["proprio_encoder.weight"].abs().sum() > 0
            assert all(grads[n] is None for n in frozen)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_unread_vlm_parameters_get_no_gradient_even_when_trainable():
    """The parameters called frozen are exactly those no action output depends on (plus embeddings/final norm)."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg)
    images, text_ids, text_mask, proprio, actions, noise = make_batch(cfg)
    model(images, text_ids, text_mask, proprio, actions, noise=noise, time=torch.full((2,), 0.5)).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    unread = set(model.frozen_parameter_names()) - {"joint.experts.vlm.embed_tokens.weight"}
    assert no_grad == unread


def test_bad_inputs_are_named():
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, actions, noise = make_batch(cfg)
    with pytest.raises(ValueError, match="proprio must be"):
        model.sample_actions(images, text_ids, text_mask, proprio[:, :, :3])
    with pytest.raises(ValueError, match="vision tower expects images"):
        model.sample_actions(images[..., :-1], text_ids, text_mask, proprio)
    with pytest.raises(ValueError, match="images must be"):
        model.sample_actions(images[:, 0], text_ids, text_mask, proprio)
    with pytest.raises(ValueError, match="actions must be"):
        model(images, text_ids, text_mask, proprio, actions[:, :2])
    with pytest.raises(ValueError, match="unknown model config"):
        PiZeroConfig.preset("huge")
    with pytest.raises(ValueError, match="time_conditioning"):
        PiZeroConfig.preset("tiny", time_conditioning="film")


def run_script(*args: str, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_count_params_of_full_config_match_published_counts():
    out = run_script("src/pg_vla/model/vla/pizero.py", "--count_params", "--config", "pi0")
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts == {  # DESIGN.md section 2
        "vision": 412_442_352,
        "projector": 2_361_344,
        "vlm": 2_508_662_784,
        "vlm_trainable": 2_287_632_112,
        "action_expert": 314_636_295,
        "total": 412_442_352 + 2_361_344 + 2_508_662_784 + 314_636_295,
    }


def test_self_test_scripts_run():
    out = run_script("src/pg_vla/model/vla/pizero.py", "--config", "tiny")
    assert "shape (2, 4, 7)" in out
    out = run_script("src/pg_vla/model/vla/joint_model.py")
    assert "block attention mask" in out
    assert " act    1    1    1    1    0    1    1    1" in out


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", time_conditioning="adaln")
    model = PiZero(cfg)
    batch = make_batch(cfg)
    images, text_ids, text_mask, proprio, actions, noise = batch
    t = torch.tensor([0.3, 0.9])

    def grads():
        model.zero_grad()
        model(images, text_ids, text_mask, proprio, actions, noise=noise, time=t).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_gradient_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_bfloat16_sampling_runs_and_stays_close_to_float32():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg)
    reference = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise, use_cache=False)
    model = model.to(torch.bfloat16)
    cached = model.sample_actions(images.bfloat16(), text_ids, text_mask, proprio, noise=noise, use_cache=True)
    assert cached.dtype == torch.float32
    assert (cached - reference).abs().mean().item() < 2e-2


def test_rotary_frequencies_stay_float32_after_casting_to_bfloat16():
    """Positions near 300 (a 256-token image + text) need exact frequencies; bf16 ones are off by 0.4%."""
    from pg_vla.model.paligemma.gemma import RotaryEmbedding

    rotary = RotaryEmbedding(head_dim=256, theta=10000.0).to(torch.bfloat16)
    positions = torch.tensor([[0, 1, 280]])
    cos, sin = rotary(positions, torch.float32)
    k = torch.arange(128, dtype=torch.float64)
    angles = 280 * 10000.0 ** (-2 * k / 256)
    torch.testing.assert_close(cos[0, 0, 2, :128].double(), angles.cos(), atol=2e-4, rtol=0)
    torch.testing.assert_close(sin[0, 0, 2, 128:].double(), angles.sin(), atol=2e-4, rtol=0)


def test_loss_is_the_masked_mean_squared_velocity_error():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, actions, noise = make_batch(cfg)
    t = torch.tensor([0.25, 0.75])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    with torch.no_grad():
        x_t = t.view(2, 1, 1) * noise + (1 - t.view(2, 1, 1)) * actions  # by hand: the straight path
        v = model.predict_velocity(images, text_ids, text_mask, proprio, x_t, t).double()
        err = (v - (noise - actions).double()) ** 2
        expected_full = err.mean()
        expected_masked = (err[0].sum() + err[1, :2].sum()) / (6 * cfg.action_dim)
        full = model(images, text_ids, text_mask, proprio, actions, noise=noise, time=t)
        masked = model(images, text_ids, text_mask, proprio, actions, noise=noise, time=t, action_mask=mask)
    assert full.item() == pytest.approx(expected_full.item(), rel=1e-5)
    assert masked.item() == pytest.approx(expected_masked.item(), rel=1e-5)
    assert abs(masked.item() - full.item()) > 1e-4


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
def test_grouped_query_attention_matches_float64_per_head_softmax(heads, kv_heads):
    """Folding the query heads of a KV group into the query axis equals attention written out per head:
    query head h reads KV head h // (heads / kv_heads), masked keys get zero weight."""
    from pg_vla.model.vla.joint_model import fold_query_groups, grouped_query_attention

    gen = torch.Generator().manual_seed(heads * 10 + kv_heads)
    b, tq, tk, dh = 2, 5, 7, 8
    q = torch.randn(b, heads, tq, dh, generator=gen)
    k = torch.randn(b, kv_heads, tk, dh, generator=gen)
    v = torch.randn(b, kv_heads, tk, dh, generator=gen)
    mask = torch.rand(b, 1, tq, tk, generator=gen) > 0.4
    mask[..., 0] = True  # every query row reads at least one key
    out = grouped_query_attention(q, k, v, fold_query_groups(mask, heads // kv_heads))

    expected = torch.empty(b, heads, tq, dh, dtype=torch.float64)
    group = heads // kv_heads
    for i in range(b):
        for h in range(heads):
            kh = h // group
            scores = q[i, h].double() @ k[i, kh].double().T / dh**0.5  # (tq, tk)
            scores = scores.masked_fill(~mask[i, 0], float("-inf"))
            expected[i, h] = scores.softmax(dim=-1) @ v[i, kh].double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_denoise_step_rejects_a_chunk_of_another_length():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg).eval()
    images, text_ids, text_mask, proprio, _, noise = make_batch(cfg)
    with torch.no_grad():
        prefix = model.encode_prefix(images, text_ids, text_mask, proprio)
        with pytest.raises(ValueError, match="action steps"):
            model.denoise_step(prefix, noise[:, :-1], torch.ones(noise.shape[0]))


@pytest.mark.parametrize("name,image_tokens", [("opz_tiny", 16), ("opz_small", 256)])
def test_open_pi_zero_geometry_presets(name, image_tokens):
    """open-pi-zero's benchmark geometries: (image / patch)^2 image tokens, 1 camera, 20 text tokens, 1 proprio
    token, horizon 4, 7-D state and actions, 10 flow steps, 1 KV head; the tiny one samples a chunk."""
    cfg = PiZeroConfig.preset(name)
    assert cfg.num_image_tokens == image_tokens and cfg.vision.num_patches == image_tokens
    assert (cfg.num_cameras, cfg.max_text_tokens, cfg.cond_steps, cfg.horizon_steps) == (1, 20, 1, 4)
    assert (cfg.proprio_dim, cfg.action_dim, cfg.num_inference_steps, cfg.time_conditioning) == (7, 7, 10, "mlp")
    assert cfg.vlm.num_kv_heads == 1 and cfg.vlm.vocab_size == 1024
    if name == "opz_tiny":
        torch.manual_seed(0)
        model = PiZero(cfg).eval()
        images = torch.rand(1, 1, 3, 56, 56) * 2 - 1
        text = torch.randint(0, 1000, (1, 20))
        with torch.no_grad():
            out = model.sample_actions(images, text, torch.ones_like(text, dtype=torch.bool), torch.zeros(1, 1, 7))
        assert out.shape == (1, 4, 7) and torch.isfinite(out).all()
