"""Read the dimensions of a PaliGemma checkpoint folder (config.json) into pg-vla's typed configs."""

from __future__ import annotations

from pathlib import Path

from pg_vla.model.vla.config import GemmaConfig, VisionConfig

# Activations the model implements; PaliGemma uses the tanh approximation of GELU in both towers.
SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_fast", "gelu_new")


def read_paligemma_dims(folder: str | Path) -> tuple[VisionConfig, GemmaConfig, int, int]:
    """Returns (vision config, VLM config, image token id, pad token id) of a PaliGemma folder."""
    from transformers import PaliGemmaConfig

    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"PaliGemma checkpoint folder {folder} does not exist")
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a PaliGemma checkpoint folder")
    hf = PaliGemmaConfig.from_pretrained(str(folder))
    text, vision = hf.text_config, hf.vision_config
    text_act = getattr(text, "hidden_activation", None) or text.hidden_act
    for tower, act in (("text", text_act), ("vision", vision.hidden_act)):
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"{config_file}: {tower} activation {act!r} is not supported (expected one of {SUPPORTED_ACTIVATIONS})"
            )
    if getattr(vision, "vision_use_head", False):
        raise ValueError(f"{config_file}: vision_use_head=true is not a PaliGemma layout")
    projection_dim = getattr(vision, "projection_dim", text.hidden_size)
    if projection_dim != text.hidden_size:
        raise ValueError(f"{config_file}: projection_dim {projection_dim} != text hidden_size {text.hidden_size}")
    rope_theta = (getattr(text, "rope_parameters", None) or {}).get("rope_theta", getattr(text, "rope_theta", 10000.0))
    vision_cfg = VisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_layers=vision.num_hidden_layers,
        num_heads=vision.num_attention_heads,
        patch_size=vision.patch_size,
        image_size=vision.image_size,
        layer_norm_eps=vision.layer_norm_eps,
    )
    vlm_cfg = GemmaConfig(
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        vocab_size=text.vocab_size,
        rms_norm_eps=text.rms_norm_eps,
        rope_theta=float(rope_theta),
    )
    image_token_id = getattr(hf, "image_token_id", None)
    if image_token_id is None:
        image_token_id = hf.image_token_index
    pad_token_id = text.pad_token_id if text.pad_token_id is not None else 0
    return vision_cfg, vlm_cfg, int(image_token_id), int(pad_token_id)
