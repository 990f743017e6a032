"""Random pi0 folders written by transformers' PI0ForConditionalGeneration, in every layout users have.

    uv run python -m pg_vla.testing.pi0_folders --output_dir DIR [--geometry gqa] [--layout transformers]

Layouts (what `pg_vla.model.pretrained` must read):
    transformers           `save_pretrained` as it is: config.json of model_type pi0, model.safetensors
    transformers_prefixed  the same tensors with LeRobot's leading `model.` on every key
    lerobot                LeRobot's config.json dialect (type pi0, variants), `model.`-prefixed keys, and
                           the older transformers key style openpi's conversion writes (vision_model.,
                           no inner language_model.model., the VLM embeddings only as paligemma.lm_head)
    openpi                 openpi's config.json dialect (action_dim, action_horizon, variants), the older key style

The LeRobot and openpi dialects name Gemma variants, so their folders use the `dummy` geometry
(openpi's dummy Gemma: 64 wide, 4 layers, 8 heads, 1 KV head of 16; SigLIP with 72-wide heads).
Every parameter is drawn at random (norm weights too), so no part can go unnoticed in a parity test.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass(frozen=True)
class Pi0Geometry:
    vision_hidden: int
    vision_heads: int
    vision_layers: int
    vision_mlp: int
    patch: int
    image: int
    vlm_hidden: int
    vlm_mlp: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    expert_hidden: int
    expert_mlp: int
    vocab: int
    state_dim: int
    action_dim: int
    chunk: int
    cameras: int  # how many cameras tests feed (not part of the checkpoint)


GEOMETRIES: dict[str, Pi0Geometry] = {
    # grouped-query attention (4 heads share 2 KV heads), state and action dims differ
    "gqa": Pi0Geometry(32, 2, 2, 64, 8, 32, 64, 128, 2, 4, 2, 16, 32, 64, 300, 6, 9, 5, cameras=1),
    # three cameras, one KV head, head_dim x heads != hidden
    "cameras": Pi0Geometry(24, 2, 1, 48, 8, 24, 48, 96, 2, 8, 1, 8, 24, 40, 260, 10, 4, 3, cameras=3),
    # full multi-head attention (KV heads = heads), three layers
    "mha": Pi0Geometry(16, 2, 2, 32, 4, 16, 40, 80, 3, 4, 4, 12, 20, 36, 280, 3, 7, 6, cameras=2),
    # openpi's "dummy" variant for both experts (LeRobot / openpi dialects)
    "dummy": Pi0Geometry(144, 2, 1, 64, 8, 16, 64, 128, 4, 8, 1, 16, 64, 128, 320, 8, 8, 4, cameras=2),
}
LAYOUTS = ("transformers", "transformers_prefixed", "lerobot", "openpi")


def pi0_config(geometry: Pi0Geometry):
    from transformers import PI0Config

    g = geometry
    return PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "image_token_id": g.vocab - 1,
            "projection_dim": g.vlm_hidden,
            "text_config": {
                "model_type": "gemma",
                "hidden_size": g.vlm_hidden,
                "intermediate_size": g.vlm_mlp,
                "num_hidden_layers": g.layers,
                "num_attention_heads": g.heads,
                "num_key_value_heads": g.kv_heads,
                "head_dim": g.head_dim,
                "vocab_size": g.vocab,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": g.vision_hidden,
                "intermediate_size": g.vision_mlp,
                "num_hidden_layers": g.vision_layers,
                "num_attention_heads": g.vision_heads,
                "patch_size": g.patch,
                "image_size": g.image,
                "vision_use_head": False,
            },
        },
        dit_config={
            "model_type": "gemma",
            "hidden_size": g.expert_hidden,
            "intermediate_size": g.expert_mlp,
            "num_hidden_layers": g.layers,
            "num_attention_heads": g.heads,
            "num_key_value_heads": g.kv_heads,
            "head_dim": g.head_dim,
        },
        chunk_size=g.chunk,
        max_state_dim=g.state_dim,
        max_action_dim=g.action_dim,
    )


def build_reference(geometry: Pi0Geometry, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random transformers PI0ForConditionalGeneration; every parameter perturbed (norms included)."""
    from transformers import PI0ForConditionalGeneration

    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(pi0_config(geometry))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype).eval()


def _older_key_style(key: str) -> str:
    """transformers-5 save layout -> the layout of openpi's conversion (transformers 4.5x names)."""
    p = "paligemma_with_expert.paligemma.model."
    key = key.replace(p + "vision_tower.", p + "vision_tower.vision_model.")
    key = key.replace(p + "language_model.model.", p + "language_model.")
    if key == p + "language_model.embed_tokens.weight":
        return "paligemma_with_expert.paligemma.lm_head.weight"
    return key


def write_pi0_folder(
    folder: str | Path,
    geometry: str | Pi0Geometry = "gqa",
    layout: str = "transformers",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """Write a random pi0 folder; returns (folder, the transformers reference model it holds)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    g = GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    folder = Path(folder)
    reference = build_reference(g, seed, dtype)
    reference.save_pretrained(folder)
    if layout == "transformers":
        return folder, reference
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    if layout in ("lerobot", "openpi"):
        tensors = {_older_key_style(k): v for k, v in tensors.items()}
    if layout in ("transformers_prefixed", "lerobot"):
        tensors = {"model." + k: v for k, v in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    if layout == "lerobot":
        _write_json(
            folder / "config.json",
            {
                "type": "pi0",
                "n_obs_steps": 1,
                "chunk_size": g.chunk,
                "n_action_steps": g.chunk,
                "max_state_dim": g.state_dim,
                "max_action_dim": g.action_dim,
                "paligemma_variant": "dummy",
                "action_expert_variant": "dummy",
                "tokenizer_max_length": 48,
                "num_steps": 10,
                "min_period": 4e-3,
                "max_period": 4.0,
                "resize_imgs_with_padding": [g.image, g.image],
            },
        )
    elif layout == "openpi":
        if g.state_dim != g.action_dim:
            raise ValueError("openpi's config has one action_dim for state and action: use equal dims")
        _write_json(
            folder / "config.json",
            {
                "action_dim": g.action_dim,
                "action_horizon": g.chunk,
                "paligemma_variant": "dummy",
                "action_expert_variant": "dummy",
                "precision": "float32",
                "pi05": False,
            },
        )
    return folder, reference


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a random tiny pi0 folder (transformers' PI0).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="gqa")
    parser.add_argument("--layout", choices=LAYOUTS, default="transformers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder, _ = write_pi0_folder(args.output_dir, args.geometry, args.layout, args.seed)
    print(folder)


if __name__ == "__main__":
    main()
