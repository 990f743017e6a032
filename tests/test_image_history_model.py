"""Image observation history in the model: V = num_cameras x cond_steps views per sample and `image_mask`.

A masked view is exactly a view that is not there (its tokens are invalid: nobody attends them and rotary
positions skip them), cached sampling still equals uncached with masked views, bad shapes are named, and
the trainer hands the loader's frame-major views and their mask to the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_policy_checkpoint, tiny_train_config
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.trainer import Trainer

FP32_ATOL = 1e-5  # float32: the same computation over a different token layout, or cached vs uncached


def make_inputs(cfg: PiZeroConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs with V = cfg.num_views views and text of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    size, length = cfg.vision.image_size, cfg.max_text_tokens
    text_mask = torch.arange(length)[None, :] < torch.tensor([length - 2 * i for i in range(batch)])[:, None]
    return {
        "images": torch.rand(batch, cfg.num_views, 3, size, size, generator=gen) * 2 - 1,  # (B, V, 3, S, S)
        "text_ids": torch.randint(4, cfg.vlm.vocab_size, (batch, length), generator=gen).masked_fill(~text_mask, 0),
        "text_mask": text_mask,
        "proprio": torch.rand(batch, cfg.cond_steps, cfg.proprio_dim, generator=gen) * 2 - 1,
        "actions": torch.rand(batch, cfg.horizon_steps, cfg.action_dim, generator=gen) * 2 - 1,
        "noise": torch.randn(batch, cfg.horizon_steps, cfg.action_dim, generator=gen),
    }


def outputs(model: PiZero, inputs: dict[str, torch.Tensor], image_mask: torch.Tensor | None = None) -> list:
    """What the model returns for `inputs`: the loss at pinned noise and times, and the sampled chunk (cached
    and uncached) for the flow head; the loss and the bin logits for the discrete head."""
    observation = {k: inputs[k] for k in ("images", "text_ids", "text_mask", "proprio")}
    time = torch.linspace(0.2, 0.9, inputs["actions"].shape[0])
    with torch.no_grad():
        loss = model(**observation, actions=inputs["actions"], noise=inputs["noise"], time=time, image_mask=image_mask)
        if model.is_discrete:
            return [loss, model.bin_logits(**observation, image_mask=image_mask)]
        return [
            loss,
            *(
                model.sample_actions(**observation, noise=inputs["noise"], use_cache=cache, image_mask=image_mask)
                for cache in (True, False)
            ),
        ]


def max_difference(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("action_head", ["flow", "discrete"])
def test_a_masked_view_is_the_same_as_the_view_removed(action_head):
    """3 cameras with one view masked per sample (view 1 in sample 0, view 2 in sample 1) = the same weights
    built for 2 cameras, given each sample's images without its masked view: no weight depends on the view
    count. Changing the masked view's pixels changes nothing; changing a read view changes the output."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", num_cameras=3, horizon_steps=3, action_head=action_head)
    model = PiZero(cfg).eval()
    fewer = PiZero(cfg.with_overrides(num_cameras=2)).eval()
    fewer.load_state_dict(model.state_dict(), strict=True)
    inputs = make_inputs(cfg)
    masked = torch.tensor([1, 2])  # per sample
    image_mask = torch.arange(3)[None, :] != masked[:, None]  # (B, V)
    kept = torch.stack([inputs["images"][i, image_mask[i]] for i in range(2)])  # (B, V - 1, 3, S, S)

    reference = outputs(fewer, {**inputs, "images": kept})
    with_mask = outputs(model, inputs, image_mask)
    assert max_difference(with_mask, reference) <= FP32_ATOL

    repainted = inputs["images"].clone()
    repainted[torch.arange(2), masked] = -repainted[torch.arange(2), masked]
    assert max_difference(outputs(model, {**inputs, "images": repainted}, image_mask), with_mask) == 0.0
    read = inputs["images"].clone()
    read[:, 0] = -read[:, 0]  # view 0 is read in both samples
    assert max_difference(outputs(model, {**inputs, "images": read}, image_mask), with_mask) > 1e-4
    # the mask is what hides the view: unmasked, the same repainting shows
    assert max_difference(outputs(model, {**inputs, "images": repainted}), outputs(model, inputs)) > 1e-4


def test_no_mask_is_an_all_true_mask():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", num_cameras=2, cond_steps=2, horizon_steps=3)
    model = PiZero(cfg).eval()
    inputs = make_inputs(cfg)
    all_true = torch.ones(2, cfg.num_views, dtype=torch.bool)
    assert max_difference(outputs(model, inputs, all_true), outputs(model, inputs)) == 0.0


@pytest.mark.parametrize("time_conditioning", ["mlp", "adaln"])
def test_cached_sampling_equals_uncached_with_masked_history_frames(time_conditioning):
    """cond_steps 2 x 2 cameras: sample 0 at an episode start (its whole first frame masked), sample 1 without
    its second camera in both frames, sample 2 with every view."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", num_cameras=2, cond_steps=2, horizon_steps=4, time_conditioning=time_conditioning)
    model = PiZero(cfg).eval()
    if time_conditioning != "mlp":  # give the zero-initialised modulations something to do
        for name, p in model.named_parameters():
            if "modulation" in name:
                torch.nn.init.normal_(p, std=0.05)
    inputs = make_inputs(cfg, batch=3)
    observation = {k: inputs[k] for k in ("images", "text_ids", "text_mask", "proprio")}
    # views frame-major: [frame t-1: cam 0, cam 1, frame t: cam 0, cam 1]
    image_mask = torch.tensor([[False, False, True, True], [True, False, True, False], [True, True, True, True]])
    noise = inputs["noise"]
    with torch.no_grad():
        cached = model.sample_actions(**observation, noise=noise, use_cache=True, image_mask=image_mask)
        uncached = model.sample_actions(**observation, noise=noise, use_cache=False, image_mask=image_mask)
        assert (cached - uncached).abs().max().item() <= FP32_ATOL
        t = torch.full((3,), 0.7)
        prefix = model.encode_prefix(**observation, image_mask=image_mask)
        v_cached = model.denoise_step(prefix, noise, t)
        v_full = model.predict_velocity(**observation, x_t=noise, t=t, image_mask=image_mask)
        assert (v_cached - v_full).abs().max().item() <= FP32_ATOL
        unmasked = model.predict_velocity(**observation, x_t=noise, t=t)
    assert v_full.abs().max() > 1e-3
    # the mask took effect where it hides something, and only there
    assert (v_full[:2] - unmasked[:2]).abs().amax(dim=(1, 2)).min() > 1e-5
    assert (v_full[2] - unmasked[2]).abs().max() <= FP32_ATOL


def test_view_counts_and_mask_shapes_are_named():
    cfg = PiZeroConfig.preset("tiny", num_cameras=2, cond_steps=2)
    model = PiZero(cfg).eval()
    inputs = make_inputs(cfg)
    observation = {k: inputs[k] for k in ("images", "text_ids", "text_mask", "proprio")}
    one_frame = {**observation, "images": observation["images"][:, : cfg.num_cameras]}  # cameras, no history
    with pytest.raises(ValueError, match=r"images must be \(batch, 4 views = 2 cameras x 2 frames.*got shape \(2, 2,"):
        model.sample_actions(**one_frame)
    with pytest.raises(ValueError, match=r"images must be \(batch, 4 views"):
        model.embed_prefix(observation["images"][:, 0], observation["text_ids"], observation["text_mask"])
    bad_masks = {
        "cameras only": torch.ones(2, 2, dtype=torch.bool),
        "another batch": torch.ones(3, 4, dtype=torch.bool),
        "per token": torch.ones(2, cfg.num_image_tokens, dtype=torch.bool),
        "float": torch.ones(2, 4),
        "int": torch.ones(2, 4, dtype=torch.long),
    }
    for mask in bad_masks.values():
        got = rf"got {mask.dtype} of shape \{tuple(mask.shape)}".replace(")", r"\)")
        for call in (
            lambda m=mask: model.sample_actions(**observation, image_mask=m),
            lambda m=mask: model(**observation, actions=inputs["actions"], image_mask=m),
            lambda m=mask: model.encode_prefix(**observation, image_mask=m),
        ):
            with pytest.raises(ValueError, match=r"image_mask must be \(batch, V\) = \(2, 4\) bool .*" + got):
                call()


def test_config_counts_every_camera_at_every_history_frame():
    cfg = PiZeroConfig.preset("tiny", num_cameras=3, cond_steps=2)
    p = cfg.vision.num_patches
    assert cfg.num_views == 6 and cfg.num_image_tokens == 6 * p
    assert cfg.prefix_len == 6 * p + cfg.max_text_tokens and cfg.seq_len == cfg.prefix_len + 2 + cfg.horizon_steps
    one = PiZeroConfig.preset("tiny", num_cameras=3)
    assert one.num_views == 3 and one.num_image_tokens == 3 * p  # cond_steps 1: unchanged


class RecordingTrainer(Trainer):
    """The real trainer; keeps every loader batch and the model inputs `_inputs` made of it."""

    seen: list[tuple[dict, dict]] = []

    def _inputs(self, batch):
        inputs = super()._inputs(batch)
        RecordingTrainer.seen.append((batch, dict(inputs)))  # a copy: validation pops the actions
        return inputs


def test_trainer_gives_the_model_every_history_frame_and_the_image_mask(tiny_episodes, tiny_checkpoint_dir, tmp_path):
    """cond_steps 2 on the tiny Parquet episodes (1 camera): two training steps and a validation through the
    real loop; the model gets (B, 2, 3, S, S) views and the loader's (B, 2) mask, the older frame masked
    exactly at episode starts."""
    RecordingTrainer.seen = []
    cfg = tiny_train_config(
        tiny_episodes,
        tiny_checkpoint_dir,
        tmp_path / "run",
        n_updates=2,
        save_every=2,
        validation={"every": 2, "batches": 2},
        model={
            "max_text_tokens": 8,
            "horizon_steps": 2,
            "cond_steps": 2,
            "action_expert": {"hidden_size": 32, "intermediate_size": 64},
        },
    )
    trainer = RecordingTrainer(cfg)
    metrics = trainer.run()
    model_cfg = trainer.model.config
    assert (model_cfg.num_cameras, model_cfg.cond_steps, model_cfg.num_views) == (1, 2, 2)
    assert trainer.processor.max_cameras == model_cfg.num_views
    assert len(RecordingTrainer.seen) >= 4  # 2 training batches, 2 validation batches
    size = model_cfg.vision.image_size
    starts = 0
    for batch, inputs in RecordingTrainer.seen:
        b = inputs["actions"].shape[0]
        assert inputs["images"].shape == (b, 2, 3, size, size)
        assert inputs["image_mask"].dtype == torch.bool and inputs["image_mask"].shape == (b, 2)
        assert torch.equal(inputs["image_mask"], torch.as_tensor(batch["image_mask"]))
        steps = torch.as_tensor(batch["step"])
        assert torch.equal(inputs["image_mask"], torch.stack((steps > 0, torch.ones(b, dtype=torch.bool)), dim=1))
        starts += int((steps == 0).sum())
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])
    records = [json.loads(line) for line in Path(tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [1, 2]
    assert starts > 0  # validation reads its episodes in order: its first batch starts one


def test_offline_evaluation_passes_the_batch_image_mask(tiny_checkpoint_dir, tmp_path):
    """eval/offline.py's `predict_batch` on a loader-layout batch of 2 cameras x 2 frames: the prediction is
    the model's with the batch's image_mask (same noise), so repainting a masked view changes nothing."""
    from pg_vla.eval.offline import predict_batch
    from pg_vla.policy import Policy

    folder = make_policy_checkpoint(
        tmp_path / "checkpoints", tiny_checkpoint_dir, camera_roles=("primary", "wrist"), cond_steps=2, num_cameras=2
    )
    policy = Policy.from_checkpoint(folder)
    cfg = policy.config
    rng = np.random.default_rng(0)
    b, size = 2, cfg.vision.image_size
    image_mask = np.array([[False, False, True, True], [True, False, True, False]])  # (B, C*N) frame-major
    batch = {
        "images": rng.integers(0, 256, (b, cfg.num_views, size, size, 3), dtype=np.uint8),  # (B, C*N, S, S, 3)
        "image_mask": torch.from_numpy(image_mask),
        "proprio": torch.from_numpy(rng.normal(0, 0.3, (b, 2, 7)).astype(np.float32)),
        "actions": torch.from_numpy(rng.uniform(-1, 1, (b, cfg.horizon_steps, 7)).astype(np.float32)),
        "action_mask": torch.ones(b, cfg.horizon_steps, dtype=torch.bool),
        "language": ["put the carrot on the plate"] * b,
        "step": torch.tensor([0, 5]),
        "tfds_id": ["e0", "e1"],
    }
    predicted = predict_batch(policy, batch, torch.Generator().manual_seed(3)).pred
    noise = torch.randn((b, cfg.horizon_steps, cfg.action_dim), generator=torch.Generator().manual_seed(3))
    text = policy.processor.tokenize(batch["language"])
    observation = {
        "images": policy.processor.preprocess_images(torch.from_numpy(batch["images"])),  # (B, C*N, 3, S, S)
        "text_ids": text["input_ids"],
        "text_mask": text["attention_mask"],
        "proprio": batch["proprio"],
    }
    expected, unmasked = (
        policy.model.sample_actions(**observation, noise=noise, num_steps=policy.num_steps, image_mask=mask)[..., :7]
        for mask in (batch["image_mask"], None)
    )
    np.testing.assert_allclose(predicted, expected.numpy(), atol=FP32_ATOL, rtol=0)
    assert np.abs(predicted - unmasked.numpy()).max() > 1e-4  # the mask matters for this batch
    repainted = batch["images"].copy()
    repainted[~image_mask] = 255 - repainted[~image_mask]
    again = predict_batch(policy, {**batch, "images": repainted}, torch.Generator().manual_seed(3)).pred
    np.testing.assert_array_equal(again, predicted)
