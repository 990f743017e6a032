"""pi0's own checkpoint layout (openpi's PyTorch conversion, LeRobot's pi0 folders, transformers' PI0) <-> PiZero.

Weight keys, with or without LeRobot's leading `model.`:

    pi0 key                                                           pg-vla parameter
    paligemma_with_expert.paligemma.model.vision_tower.(vision_model.)*   vision_tower.*
    paligemma_with_expert.paligemma.model.multi_modal_projector.linear.*  multi_modal_projector.*
    paligemma_with_expert.paligemma.model.language_model.(model.)*        joint.experts.vlm.*
    paligemma_with_expert.paligemma.lm_head.weight                        joint.experts.vlm.embed_tokens.weight
                                                                          (only when the embeddings are absent: tied)
    paligemma_with_expert.gemma_expert.model.{layers,norm}.*              joint.experts.action.{layers,norm}.*
    paligemma_with_expert.gemma_expert.{lm_head,model.embed_tokens}.*     unused (the action expert reads no tokens)
    state_proj.*                                                          proprio_encoder.*
    action_in_proj.*                                                      action_encoder.action_proj.*
    action_time_mlp_in.* / action_time_mlp_out.*                          action_encoder.time_mlp_in.* / time_mlp_out.*
    action_out_proj.*                                                     action_decoder.*

Configs (config.json), three dialects:
    transformers  model_type "pi0": vlm_config (PaliGemma), dit_config (Gemma), chunk_size, max_state_dim,
                  max_action_dim, min_period, max_period, num_inference_steps, time_sampling_*
    LeRobot       type "pi0": chunk_size, max_state_dim, max_action_dim, paligemma_variant,
                  action_expert_variant, tokenizer_max_length, num_steps, min_period, max_period
    openpi        action_dim, action_horizon, paligemma_variant, action_expert_variant (pi05 false)

transformers' config gives every dimension. LeRobot's and openpi's name Gemma variants: the variant
table below supplies what tensors cannot show (heads, KV heads, head dim), and widths, MLP sizes,
layer counts, vocabulary and action/state sizes are read from the tensor shapes, checked against
the variant. Their SigLIP tower is So400m-style: 72-wide heads, so heads = hidden / 72.

`write_pi0_folder` writes transformers' `save_pretrained` layout (config.json of model_type pi0 and
model.safetensors), which `PI0ForConditionalGeneration.from_pretrained` loads with no missing or
unexpected keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.vla.config import ActionExpertConfig, GemmaConfig, PiZeroConfig, VisionConfig

UNUSED = "<unused>"  # marks pi0 keys that no pg-vla parameter takes
PI0_TEXT_TOKENS = 48  # pi0's tokenizer length (openpi max_token_len, LeRobot tokenizer_max_length)
SIGLIP_HEAD_DIM = 72  # So400m/14: 1152 = 16 heads x 72

# What the tensors of a Gemma variant named by openpi / LeRobot configs cannot show: (heads, KV heads, head dim)
# (openpi's gemma.py: gemma_2b is 2048 wide, gemma_300m 1024, dummy 64; widths are read from the tensors).
GEMMA_VARIANTS: dict[str, tuple[int, int, int]] = {
    "gemma_2b": (8, 1, 256),
    "gemma_300m": (8, 1, 256),
    "dummy": (8, 1, 16),
}

_P = "paligemma_with_expert."
_KEY_RULES: tuple[tuple[str, str], ...] = (  # (pi0 key prefix, pg-vla prefix); first match wins
    (_P + "paligemma.model.vision_tower.vision_model.", "vision_tower."),
    (_P + "paligemma.model.vision_tower.", "vision_tower."),
    (_P + "paligemma.model.multi_modal_projector.linear.", "multi_modal_projector."),
    (_P + "paligemma.model.language_model.model.", "joint.experts.vlm."),
    (_P + "paligemma.model.language_model.", "joint.experts.vlm."),
    (_P + "gemma_expert.model.embed_tokens.", UNUSED),
    (_P + "gemma_expert.lm_head.", UNUSED),
    (_P + "gemma_expert.model.", "joint.experts.action."),
    ("state_proj.", "proprio_encoder."),
    ("action_in_proj.", "action_encoder.action_proj."),
    ("action_time_mlp_in.", "action_encoder.time_mlp_in."),
    ("action_time_mlp_out.", "action_encoder.time_mlp_out."),
    ("action_out_proj.", "action_decoder."),
)
TIED_EMBEDDING_KEY = _P + "paligemma.lm_head.weight"
EMBEDDING_NAME = "joint.experts.vlm.embed_tokens.weight"
# Where `write_pi0_folder` puts each pg-vla prefix: transformers' save_pretrained layout.
_EXPORT_RULES: tuple[tuple[str, str], ...] = (
    ("vision_tower.", _P + "paligemma.model.vision_tower."),
    ("multi_modal_projector.", _P + "paligemma.model.multi_modal_projector.linear."),
    ("joint.experts.vlm.", _P + "paligemma.model.language_model.model."),
    ("joint.experts.action.", _P + "gemma_expert.model."),
    ("proprio_encoder.", "state_proj."),
    ("action_encoder.action_proj.", "action_in_proj."),
    ("action_encoder.time_mlp_in.", "action_time_mlp_in."),
    ("action_encoder.time_mlp_out.", "action_time_mlp_out."),
    ("action_decoder.", "action_out_proj."),
)
EXPERT_EMBEDDING_KEY = _P + "gemma_expert.lm_head.weight"  # transformers' PI0 keeps (vocab, width) rows there


def strip_lerobot_prefix(key: str) -> str:
    """LeRobot's files prefix every key with `model.`."""
    return key[len("model.") :] if key.startswith("model.") else key


def map_pi0_key(key: str) -> str | None:
    """pi0 checkpoint key -> pg-vla parameter name, UNUSED, or None (a key of no known part)."""
    key = strip_lerobot_prefix(key)
    if key == TIED_EMBEDDING_KEY:
        return EMBEDDING_NAME
    for prefix, own in _KEY_RULES:
        if key.startswith(prefix):
            return UNUSED if own == UNUSED else own + key[len(prefix) :]
    return None


SCENE_STATE_PREFIX = "scene_state_decoder."  # the scene-state readout (training only), not exported


def export_key(name: str) -> str:
    """pg-vla parameter name -> key in transformers' save_pretrained layout."""
    for own, prefix in _EXPORT_RULES:
        if name.startswith(own):
            return prefix + name[len(own) :]
    raise CheckpointError(f"parameter {name} has no place in pi0's layout")


# ---- configs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pi0Folder:
    """What a pi0 folder's config.json says, read into pg-vla's model config."""

    dialect: str  # transformers | lerobot | openpi
    config: PiZeroConfig


def config_dialect(raw: dict[str, Any]) -> str | None:
    """Which pi0 config dialect a config.json dict is written in (None: not pi0)."""
    if raw.get("model_type") == "pi0":
        return "transformers"
    if raw.get("type") in ("pi0", "pi05"):
        return "lerobot"
    if "action_horizon" in raw and "paligemma_variant" in raw:
        return "openpi"
    return None


def read_pi0_config(config_file: Path, shapes: dict[str, tuple[int, ...]]) -> Pi0Folder:
    """config.json of a pi0 folder (+ its tensor shapes, pi0 key -> shape) -> PiZeroConfig."""
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from err
    dialect = config_dialect(raw)
    if dialect is None:
        raise CheckpointError(f"{config_file} is not a pi0 config (no model_type pi0, LeRobot type or openpi keys)")
    if raw.get("type") == "pi05" or raw.get("pi05") or raw.get("model_type") == "pi05":
        raise CheckpointError(
            f"{config_file} describes pi0.5 (adaRMS time conditioning, tokenized state), which "
            "this model does not implement; use a pi0 checkpoint"
        )
    if dialect == "transformers":
        config = _config_from_transformers(raw, config_file)
    else:
        config = _config_from_variants(raw, dialect, shapes, config_file)
    return Pi0Folder(dialect, config)


def _config_from_transformers(raw: dict[str, Any], config_file: Path) -> PiZeroConfig:
    from transformers import PI0Config

    hf = PI0Config.from_dict(raw)
    text, vision, dit = hf.vlm_config.text_config, hf.vlm_config.vision_config, hf.dit_config
    offset = hf.time_sampling_offset
    if abs(offset - (1.0 - hf.time_sampling_scale)) > 1e-9:
        raise CheckpointError(
            f"{config_file}: time_sampling_offset {offset} != 1 - time_sampling_scale "
            f"{hf.time_sampling_scale}; pg-vla samples t = scale * Beta + (1 - scale)"
        )

    def rope(cfg: Any) -> float:
        return float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0))

    vlm = GemmaConfig(
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        vocab_size=text.vocab_size,
        rms_norm_eps=text.rms_norm_eps,
        rope_theta=rope(text),
    )
    geometry = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
    if any(getattr(dit, g) != getattr(text, g) for g in geometry) or rope(dit) != rope(text):
        raise CheckpointError(
            f"{config_file}: dit_config and vlm_config.text_config differ in "
            f"{[g for g in geometry if getattr(dit, g) != getattr(text, g)]}; the joint "
            "attention needs the same layers, heads, KV heads and head dim"
        )
    return PiZeroConfig(
        vision=VisionConfig(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_layers=vision.num_hidden_layers,
            num_heads=vision.num_attention_heads,
            patch_size=vision.patch_size,
            image_size=vision.image_size,
            layer_norm_eps=vision.layer_norm_eps,
        ),
        vlm=vlm,
        action_expert=ActionExpertConfig(hidden_size=dit.hidden_size, intermediate_size=dit.intermediate_size),
        image_token_id=int(hf.vlm_config.image_token_id),
        pad_token_id=int(text.pad_token_id or 0),
        max_text_tokens=PI0_TEXT_TOKENS,
        horizon_steps=hf.chunk_size,
        action_dim=hf.max_action_dim,
        proprio_dim=hf.max_state_dim,
        time_beta_alpha=hf.time_sampling_beta_alpha,
        time_beta_beta=hf.time_sampling_beta_beta,
        time_max=hf.time_sampling_scale,
        time_min_period=hf.min_period,
        time_max_period=hf.max_period,
        num_inference_steps=hf.num_inference_steps,
    )


def _variant(raw: dict[str, Any], key: str, default: str, config_file: Path) -> tuple[int, int, int]:
    name = raw.get(key, default)
    name = name.removesuffix("_lora") if isinstance(name, str) else name
    if name not in GEMMA_VARIANTS:
        raise CheckpointError(f"{config_file}: {key} {raw.get(key)!r} is unknown; known: {sorted(GEMMA_VARIANTS)}")
    return GEMMA_VARIANTS[name]


def _config_from_variants(
    raw: dict[str, Any], dialect: str, shapes: dict[str, tuple[int, ...]], config_file: Path
) -> PiZeroConfig:
    def find(pattern: str) -> list[tuple[re.Match, tuple[int, ...]]]:
        regex = re.compile(pattern)
        return [(m, s) for k, s in shapes.items() if (m := regex.search(strip_lerobot_prefix(k)))]

    def shape(pattern: str) -> tuple[int, ...]:
        """The shape of the first tensor whose (prefix-stripped) key ends with `pattern` (a regex)."""
        hits = find(pattern + "$")
        if not hits:
            raise CheckpointError(f"{config_file.parent}: no tensor matching {pattern} to read the model's size from")
        return hits[0][1]

    def layers(pattern: str) -> int:
        found = {int(m.group(1)) for m, _ in find(pattern + r"layers\.(\d+)\.")}
        if not found:
            raise CheckpointError(f"{config_file.parent}: no tensors matching {pattern}layers.N")
        return max(found) + 1

    def gemma(pattern: str, variant: tuple[int, int, int], name: str, vocab: int) -> GemmaConfig:
        heads, kv_heads, head_dim = variant
        cfg = GemmaConfig(
            hidden_size=shape(pattern + r"layers\.0\.input_layernorm\.weight")[0],
            intermediate_size=shape(pattern + r"layers\.0\.mlp\.gate_proj\.weight")[0],
            num_layers=layers(pattern),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
        )
        q = shape(pattern + r"layers\.0\.self_attn\.q_proj\.weight")
        k = shape(pattern + r"layers\.0\.self_attn\.k_proj\.weight")
        if q[0] != heads * head_dim or k[0] != kv_heads * head_dim:
            raise CheckpointError(
                f"{config_file}: {name}'s q_proj/k_proj shapes {q}/{k} do not fit its variant "
                f"({heads} heads, {kv_heads} KV heads of {head_dim})"
            )
        return cfg

    embed = find(r"paligemma\.(?:model\.language_model\.(?:model\.)?embed_tokens|lm_head)\.weight$")
    if not embed:
        raise CheckpointError(f"{config_file.parent}: neither the VLM token embeddings nor paligemma.lm_head.weight")
    vlm = gemma(
        r"paligemma\.model\.language_model\.(?:model\.)?",
        _variant(raw, "paligemma_variant", "gemma_2b", config_file),
        "the VLM",
        embed[0][1][0],
    )
    expert = gemma(
        r"gemma_expert\.model\.",
        _variant(raw, "action_expert_variant", "gemma_300m", config_file),
        "the action expert",
        1,
    )
    if expert.num_layers != vlm.num_layers:
        raise CheckpointError(
            f"{config_file.parent}: the VLM has {vlm.num_layers} layers, the action expert "
            f"{expert.num_layers}; the joint attention needs the same number"
        )
    patch = shape(r"embeddings\.patch_embedding\.weight")  # (D, 3, p, p)
    side = round(shape(r"embeddings\.position_embedding\.weight")[0] ** 0.5)
    if patch[0] % SIGLIP_HEAD_DIM:
        raise CheckpointError(
            f"{config_file.parent}: SigLIP width {patch[0]} is not a multiple of its {SIGLIP_HEAD_DIM}-wide heads"
        )
    vision = VisionConfig(
        hidden_size=patch[0],
        intermediate_size=shape(r"encoder\.layers\.0\.mlp\.fc1\.weight")[0],
        num_layers=layers(r"vision_tower\.(?:vision_model\.)?encoder\."),
        num_heads=patch[0] // SIGLIP_HEAD_DIM,
        patch_size=patch[2],
        image_size=side * patch[2],
    )
    horizon_key, action_key, state_key = (
        ("chunk_size", "max_action_dim", "max_state_dim")
        if dialect == "lerobot"
        else ("action_horizon", "action_dim", "action_dim")
    )
    action_dim, state_dim = shape(r"^action_in_proj\.weight")[1], shape(r"^state_proj\.weight")[1]
    for key, value in ((action_key, action_dim), (state_key, state_dim)):
        if key in raw and raw[key] != value:
            raise CheckpointError(f"{config_file}: {key} {raw[key]} does not match the weights ({value})")
    return PiZeroConfig(
        vision=vision,
        vlm=vlm,
        action_expert=ActionExpertConfig(hidden_size=expert.hidden_size, intermediate_size=expert.intermediate_size),
        max_text_tokens=int(raw.get("tokenizer_max_length", raw.get("max_token_len", PI0_TEXT_TOKENS))),
        horizon_steps=int(raw.get(horizon_key, 50)),
        action_dim=action_dim,
        proprio_dim=state_dim,
        num_inference_steps=int(raw.get("num_steps", raw.get("num_inference_steps", 10))),
        time_min_period=float(raw.get("min_period", 4e-3)),
        time_max_period=float(raw.get("max_period", 4.0)),
    )


def refuse_unexportable(config: PiZeroConfig) -> None:
    """pi0's layout has one state token, the action-time MLP and the flow head: anything else is refused."""
    reasons = []
    if config.action_head != "flow":
        reasons.append(f"action_head={config.action_head!r} (pi0 has only the flow-matching action expert)")
    if config.time_conditioning != "mlp":
        reasons.append(
            f"time_conditioning={config.time_conditioning!r} (pi0 feeds time through its action-time "
            "MLP; adaLN norms have no tensors in its layout)"
        )
    if config.cond_steps != 1:
        reasons.append(f"cond_steps={config.cond_steps} (pi0 reads one state token)")
    if config.time_sampling != "beta":
        reasons.append(f"time_sampling={config.time_sampling!r} (pi0's config describes Beta time sampling only)")
    if reasons:
        raise CheckpointError("this model cannot be written in pi0's layout: " + "; ".join(reasons))


def transformers_config(config: PiZeroConfig) -> Any:
    """PiZeroConfig -> transformers' PI0Config (what config.json of an exported folder holds)."""
    from transformers import PI0Config

    refuse_unexportable(config)
    vis, vlm, act = config.vision, config.vlm, config.action_expert
    rope = {"rope_theta": vlm.rope_theta, "rope_type": "default"}
    return PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "image_token_id": config.image_token_id,
            "projection_dim": vlm.hidden_size,
            "text_config": {
                "model_type": "gemma",
                "hidden_size": vlm.hidden_size,
                "intermediate_size": vlm.intermediate_size,
                "num_hidden_layers": vlm.num_layers,
                "num_attention_heads": vlm.num_heads,
                "num_key_value_heads": vlm.num_kv_heads,
                "head_dim": vlm.head_dim,
                "vocab_size": vlm.vocab_size,
                "rms_norm_eps": vlm.rms_norm_eps,
                "rope_parameters": rope,
                "pad_token_id": config.pad_token_id,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": vis.hidden_size,
                "intermediate_size": vis.intermediate_size,
                "num_hidden_layers": vis.num_layers,
                "num_attention_heads": vis.num_heads,
                "patch_size": vis.patch_size,
                "image_size": vis.image_size,
                "layer_norm_eps": vis.layer_norm_eps,
                "vision_use_head": False,
            },
        },
        dit_config={
            "model_type": "gemma",
            "hidden_size": act.hidden_size,
            "intermediate_size": act.intermediate_size,
            "num_hidden_layers": vlm.num_layers,
            "num_attention_heads": vlm.num_heads,
            "num_key_value_heads": vlm.num_kv_heads,
            "head_dim": vlm.head_dim,
            "rms_norm_eps": vlm.rms_norm_eps,
            "rope_parameters": rope,
        },
        chunk_size=config.horizon_steps,
        max_state_dim=config.proprio_dim,
        max_action_dim=config.action_dim,
        num_inference_steps=config.num_inference_steps,
        time_sampling_beta_alpha=config.time_beta_alpha,
        time_sampling_beta_beta=config.time_beta_beta,
        time_sampling_scale=config.time_max,
        time_sampling_offset=1.0 - config.time_max,
        min_period=config.time_min_period,
        max_period=config.time_max_period,
    )


def export_tensors(state: dict[str, torch.Tensor], config: PiZeroConfig) -> dict[str, torch.Tensor]:
    """pg-vla state dict -> tensors under transformers' save_pretrained keys (incl. the expert's unused rows).
    The scene-state readout is left out: a training aid no action depends on, with no place in pi0's layout."""
    refuse_unexportable(config)
    out = {
        export_key(name): t.detach().contiguous().cpu()
        for name, t in state.items()
        if not name.startswith(SCENE_STATE_PREFIX)
    }
    some = next(iter(out.values()))
    # transformers' PI0 gives its action expert a (vocab, width) embedding it never reads; zeros fill it.
    out[EXPERT_EMBEDDING_KEY] = torch.zeros(config.vlm.vocab_size, config.action_expert.hidden_size, dtype=some.dtype)
    return out
