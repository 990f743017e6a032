"""pg-vla's PaliGemma expert against transformers' PaliGemmaForConditionalGeneration (the reference).

Both load the same random tiny checkpoint folder written by transformers' save_pretrained; the two
variants cover grouped-query attention with several KV heads and head_dim != hidden / heads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PaliGemmaForConditionalGeneration

from pg_vla.model.paligemma.loading import CheckpointError, load_paligemma_weights
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

LOGIT_ATOL = 1e-4  # float32, required by the model-core contract
FEATURE_ATOL = 1e-5


@pytest.fixture(scope="module", params=["gqa", "odd_head_dim"])
def pair(request, tiny_checkpoint_dir, tiny_checkpoint_dir_odd):
    folder = tiny_checkpoint_dir if request.param == "gqa" else tiny_checkpoint_dir_odd
    reference = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    model = PiZero(PiZeroConfig.from_paligemma(folder)).eval()
    report = load_paligemma_weights(model, folder)
    assert not report.missing and not report.unexpected
    return folder, reference, model


def _inputs(model: PiZero, seed: int = 0, text_len: int = 7):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    pixels = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    text = torch.randint(4, cfg.image_token_id, (2, text_len), generator=gen)
    text[:, 0] = 2  # <bos>
    return pixels, text


def _reference_ids(model: PiZero, text: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    image_ids = torch.full((text.shape[0], cfg.vision.num_patches), cfg.image_token_id)
    return torch.cat((image_ids, text), dim=1)


def test_config_read_from_folder(pair):
    folder, reference, model = pair
    hf_text = reference.config.text_config
    assert model.config.vlm.head_dim == hf_text.head_dim
    assert model.config.vlm.num_kv_heads == hf_text.num_key_value_heads
    assert (
        model.config.vision.num_patches
        == (reference.config.vision_config.image_size // reference.config.vision_config.patch_size) ** 2
    )


def test_siglip_and_projector_features_match(pair):
    _, reference, model = pair
    pixels, _ = _inputs(model)
    with torch.no_grad():
        ref_vision = reference.model.vision_tower(pixel_values=pixels).last_hidden_state
        ref_projected = reference.model.multi_modal_projector(ref_vision)
        ours_vision = model.vision_tower(pixels)
        ours_projected = model.embed_images(pixels[:, None])
    torch.testing.assert_close(ours_vision, ref_vision, atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(ours_projected, ref_projected, atol=FEATURE_ATOL, rtol=0)


def test_image_text_logits_match(pair):
    _, reference, model = pair
    pixels, text = _inputs(model)
    ids = _reference_ids(model, text)
    with torch.no_grad():
        ref = reference(
            input_ids=ids,
            pixel_values=pixels,
            token_type_ids=torch.zeros_like(ids),
            attention_mask=torch.ones_like(ids),
        ).logits
        ours, _, _ = model.text_logits(pixels[:, None], text)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert (ours - ref).abs().max().item() <= LOGIT_ATOL


def test_logits_match_with_right_padding(pair):
    """Padded text tokens are invisible: valid positions match transformers with an attention mask."""
    _, reference, model = pair
    pixels, text = _inputs(model, seed=1, text_len=8)
    text_mask = torch.ones_like(text, dtype=torch.bool)
    text_mask[1, 5:] = False  # second sample has 5 real tokens, 3 padding
    text = text.masked_fill(~text_mask, 0)
    ids = _reference_ids(model, text)
    attention = torch.cat((torch.ones(2, model.config.vision.num_patches, dtype=torch.long), text_mask.long()), 1)
    with torch.no_grad():
        ref = reference(
            input_ids=ids, pixel_values=pixels, token_type_ids=torch.zeros_like(ids), attention_mask=attention
        ).logits
        ours, _, valid = model.text_logits(pixels[:, None], text, text_mask)
    assert torch.equal(valid, attention.bool())
    assert (ours - ref)[valid].abs().max().item() <= LOGIT_ATOL


def test_greedy_generation_matches_transformers(pair):
    _, reference, model = pair
    pixels, text = _inputs(model, seed=2)
    ids = _reference_ids(model, text)
    with torch.no_grad():
        ref = reference.generate(
            input_ids=ids,
            pixel_values=pixels,
            token_type_ids=torch.zeros_like(ids),
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    ours = model.generate_text(pixels[:, None], text, max_new_tokens=20)
    ref_new = ref[:, ids.shape[1] :]
    assert ref_new.shape == (2, 20)
    assert len(torch.unique(ref_new)) > 2  # not one token repeated: the check has teeth
    assert torch.equal(ours, ref_new)


def test_sharded_and_in_memory_layouts_load_identically(tmp_path, tiny_checkpoint_dir):
    reference = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint_dir).eval()
    sharded = tmp_path / "sharded"
    reference.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    in_memory = tmp_path / "in_memory"  # transformers' in-memory key names (model.language_model.*, ...)
    in_memory.mkdir()
    shutil.copy(tiny_checkpoint_dir / "config.json", in_memory / "config.json")
    save_file({k: v.clone() for k, v in reference.state_dict().items()}, in_memory / "model.safetensors")
    with safe_open(in_memory / "model.safetensors", "pt") as handle:
        assert any(k.startswith("model.language_model.") for k in handle.keys())

    models = []
    for folder in (tiny_checkpoint_dir, sharded, in_memory):
        model = PiZero(PiZeroConfig.from_paligemma(folder))
        load_paligemma_weights(model, folder)
        models.append(model.state_dict())
    vlm_keys = [k for k in models[0] if not k.startswith(("joint.experts.action", "proprio", "action_"))]
    for key in vlm_keys:
        assert torch.equal(models[0][key], models[1][key]), key
        assert torch.equal(models[0][key], models[2][key]), key


def test_loader_names_missing_unexpected_and_misshapen_keys(tmp_path, tiny_checkpoint_dir):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, folder)
    with safe_open(folder / "model.safetensors", "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    cfg = PiZeroConfig.from_paligemma(folder)

    dropped = next(k for k in tensors if k.endswith("layers.0.mlp.up_proj.weight") and "language" in k)
    broken = {k: v for k, v in tensors.items() if k != dropped}
    broken["language_model.model.extra_head.weight"] = torch.zeros(3)
    save_file(broken, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_paligemma_weights(PiZero(cfg), folder)
    assert "joint.experts.vlm.layers.0.mlp.up_proj.weight" in str(err.value)
    assert "language_model.model.extra_head.weight" in str(err.value)

    misshapen = dict(tensors)
    misshapen[dropped] = torch.zeros(3, 3)
    save_file(misshapen, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="up_proj.weight has shape"):
        load_paligemma_weights(PiZero(cfg), folder)

    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_paligemma_weights(PiZero(cfg), folder)


def test_missing_folder_and_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PiZeroConfig.from_paligemma(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_paligemma_weights(PiZero(PiZeroConfig.preset("tiny")), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PiZeroConfig.from_paligemma(empty)


def test_native_vision_layout_loads(tmp_path, tiny_checkpoint_dir):
    """transformers 5.x save_pretrained writes vision_tower.* without the vision_model level."""
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

    native = make_tiny_paligemma_checkpoint(tmp_path / "native", variant="gqa", seed=0, hub_layout=False)
    with safe_open(native / "model.safetensors", "pt") as handle:
        assert any(k.startswith("vision_tower.embeddings.") for k in handle.keys())
    a, b = (PiZero(PiZeroConfig.from_paligemma(f)) for f in (tiny_checkpoint_dir, native))
    load_paligemma_weights(a, tiny_checkpoint_dir)
    load_paligemma_weights(b, native)
    sd_b = b.state_dict()
    for key, value in a.state_dict().items():
        if key.startswith("vision_tower."):
            assert torch.equal(value, sd_b[key]), key


def test_text_only_self_test_matches_transformers_generate(tmp_path, tiny_checkpoint_dir):
    """`pizero.py --text_only` prints (last line) what transformers' processor + generate produce."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from transformers import PaliGemmaProcessor

    prompt = "put the red block in the bowl"
    reference = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint_dir).eval()
    size = reference.config.vision_config.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    image_path = tmp_path / "frame.png"
    image.save(image_path)
    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint_dir)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip()

    root = Path(__file__).resolve().parents[1]
    base = [
        sys.executable,
        "src/pg_vla/model/vla/pizero.py",
        "--text_only",
        "--load_pretrained_weights",
        "--pretrained_model_path",
        str(tiny_checkpoint_dir),
        "--prompt",
        prompt,
        "--image",
        str(image_path),
        "--max_tokens",
        "12",
    ]
    for extra in ([], ["--temperature", "0.7", "--top_p", "1e-9"]):  # a vanishing nucleus is greedy too
        result = subprocess.run(base + extra, cwd=root, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip("\n").split("\n")[-1] == expected.replace("\n", "\\n"), repr(expected)
