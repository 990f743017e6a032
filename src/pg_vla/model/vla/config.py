"""Typed configuration of the pi0 model.

Defaults are the published pi0 dimensions (PaliGemma-3B-pt-224 + the 0.3B action expert):

    SigLIP So400m/14 @ 224   hidden 1152, MLP 4304, 27 layers, 16 heads        (PaliGemma config.json)
    Gemma-2B                 hidden 2048, MLP 16384, 18 layers, 8 heads / 1 KV (PaliGemma config.json)
    action expert            hidden 1024, MLP 4096, same layer/head geometry    (pi0 paper, openpi)

Action heads (`action_head`): `flow` (default) is pi0, the action expert and flow matching; `discrete`
drops the action expert and classifies each action dimension of the chunk into `num_action_bins`
uniform bins over `action_bounds` from learned readout tokens run through the VLM (discrete_head.py).

Named presets (`PiZeroConfig.preset(name)`): `pi0` (full size), `small` (a few million parameters,
runs on a laptop CPU) and `tiny` (for unit tests). `PiZeroConfig.from_paligemma(folder)` takes the
vision and VLM dimensions from a PaliGemma checkpoint folder's config.json, so a tiny test checkpoint
and the real one build the model through the same code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TimeConditioning = Literal["mlp", "adaln", "adaln_zero"]
TimeSampling = Literal["beta", "uniform"]
ActionHead = Literal["flow", "discrete"]
DiscreteDecoding = Literal["argmax", "expected"]


@dataclass
class VisionConfig:
    """SigLIP vision tower (PaliGemma uses it without the pooling head)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_positive(self, "hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        """Image tokens per camera (256 for 224 / 14)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class GemmaConfig:
    """The VLM expert (Gemma). Its layer geometry is shared with the action expert."""

    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_layers: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 257216
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
        )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")


@dataclass
class ActionExpertConfig:
    """Width of the action expert; layers, heads and head dim come from the VLM (attention is shared)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096

    def __post_init__(self) -> None:
        _check_positive(self, "hidden_size", "intermediate_size")


@dataclass
class PiZeroConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    vlm: GemmaConfig = field(default_factory=GemmaConfig)
    action_expert: ActionExpertConfig = field(default_factory=ActionExpertConfig)
    image_token_id: int = 257152  # PaliGemma's <image> token; only used to build transformers-style prompts
    pad_token_id: int = 0  # Gemma's <pad>
    # observation / action layout
    num_cameras: int = 1  # cameras (data.camera_roles); a sample has num_views = num_cameras x cond_steps images
    max_text_tokens: int = 20  # text block length: <bos> prompt "\n", right-padded
    cond_steps: int = 1  # observation history: frames of every camera and proprio tokens
    horizon_steps: int = 4  # action chunk length
    action_dim: int = 7
    proprio_dim: int = 7
    # False: the model never reads the proprio (its tokens carry only the encoder's bias), so every action
    # must come from the images and the instruction: no shortcut through the robot's own state
    use_proprio: bool = True
    # training only: the share of samples whose proprio is replaced by zeros (the mean state), so the
    # model must also act from the images; evaluation and serving always read the proprio
    proprio_dropout: float = 0.0
    # flow matching (openpi convention: t = 1 is pure noise, t = 0 the data)
    time_conditioning: TimeConditioning = "mlp"  # pi0's action-time MLP, or adaLN / adaLN-Zero in the action expert
    time_sampling: TimeSampling = "beta"  # pi0: t = time_max * Beta(alpha, beta) + (1 - time_max)
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_max: float = 0.999
    time_min_period: float = 4e-3  # sinusoidal time embedding periods (pi0 / openpi)
    time_max_period: float = 4.0
    num_inference_steps: int = 10
    # action head: pi0's flow matching, or per-dimension bin classification (no action expert)
    action_head: ActionHead = "flow"
    num_action_bins: int = 256  # uniform bins per action dimension (RT-1/RT-2/OpenVLA use 256)
    action_bounds: tuple[float, float] = (-1.0, 1.0)  # binned range: the normalized action range by default
    discrete_mlp_hidden_dims: tuple[int, ...] = (1024,)  # MLP from a readout token to A x bins logits
    discrete_dropout: float = 0.0  # after each hidden layer of that MLP
    discrete_use_proprio: bool = True  # the normalized proprio history joins every readout token's MLP input
    discrete_decoding: DiscreteDecoding = "argmax"  # bin centre of the arg-max, or the expectation over bins
    freeze_vision: bool = False  # keep the SigLIP tower fixed (the projector still trains)
    # Scene-state readout (flow head, training only): a linear map from the current proprio token's final
    # action-expert output to the privileged scene state (simulated data: object and goal positions), trained
    # with weight `scene_state_weight` beside the flow loss, so the action expert must find the objects in
    # the image; K = scene_state_dim (0: no readout; the trainer sets it from the data when the weight > 0)
    scene_state_dim: int = 0
    scene_state_weight: float = 0.0

    def __post_init__(self) -> None:
        # Hydra / JSON hand nested dicts: turn them into the typed sub-configs.
        for name, cls in (("vision", VisionConfig), ("vlm", GemmaConfig), ("action_expert", ActionExpertConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                setattr(self, name, cls(**dict(value)))
        _check_positive(
            self,
            "num_cameras",
            "max_text_tokens",
            "cond_steps",
            "horizon_steps",
            "action_dim",
            "proprio_dim",
            "num_inference_steps",
        )
        if self.time_conditioning not in ("mlp", "adaln", "adaln_zero"):
            raise ValueError(f"time_conditioning must be mlp, adaln or adaln_zero, got {self.time_conditioning!r}")
        if self.time_sampling not in ("beta", "uniform"):
            raise ValueError(f"time_sampling must be beta or uniform, got {self.time_sampling!r}")
        if not 0.0 < self.time_max <= 1.0:
            raise ValueError(f"time_max must be in (0, 1], got {self.time_max}")
        self._check_action_head()

    def _check_action_head(self) -> None:
        # JSON and Hydra hand lists: restore the tuples.
        self.action_bounds = tuple(float(v) for v in self.action_bounds)  # type: ignore[assignment]
        self.discrete_mlp_hidden_dims = tuple(self.discrete_mlp_hidden_dims)
        if self.action_head not in ("flow", "discrete"):
            raise ValueError(f"action_head must be flow or discrete, got {self.action_head!r}")
        if self.discrete_decoding not in ("argmax", "expected"):
            raise ValueError(f"discrete_decoding must be argmax or expected, got {self.discrete_decoding!r}")
        if not isinstance(self.num_action_bins, int) or self.num_action_bins < 2:
            raise ValueError(f"num_action_bins must be an integer >= 2, got {self.num_action_bins!r}")
        if len(self.action_bounds) != 2 or not self.action_bounds[0] < self.action_bounds[1]:
            raise ValueError(f"action_bounds must be (low, high) with low < high, got {self.action_bounds}")
        if not all(isinstance(d, int) and d > 0 for d in self.discrete_mlp_hidden_dims):
            raise ValueError(f"discrete_mlp_hidden_dims must be positive integers, got {self.discrete_mlp_hidden_dims}")
        if not 0.0 <= self.proprio_dropout < 1.0:
            raise ValueError(f"proprio_dropout must be in [0, 1), got {self.proprio_dropout}")
        if not 0.0 <= self.discrete_dropout < 1.0:
            raise ValueError(f"discrete_dropout must be in [0, 1), got {self.discrete_dropout}")
        if not isinstance(self.scene_state_dim, int) or self.scene_state_dim < 0:
            raise ValueError(f"scene_state_dim must be an integer >= 0, got {self.scene_state_dim!r}")
        if not self.scene_state_weight >= 0.0:
            raise ValueError(f"scene_state_weight must be >= 0, got {self.scene_state_weight}")
        if self.scene_state_dim and self.action_head != "flow":
            raise ValueError("the scene-state readout reads the action expert's proprio token: action_head=flow only")
        for name in ("use_proprio", "discrete_use_proprio", "freeze_vision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def num_views(self) -> int:
        """Images per sample: every camera at each of the cond_steps history frames (frame-major, oldest first)."""
        return self.num_cameras * self.cond_steps

    @property
    def num_image_tokens(self) -> int:
        """num_patches tokens per view."""
        return self.num_views * self.vision.num_patches

    @property
    def prefix_len(self) -> int:
        """Image + text tokens (the VLM expert's block)."""
        return self.num_image_tokens + self.max_text_tokens

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.cond_steps + self.horizon_steps

    def action_gemma(self) -> GemmaConfig:
        """The action expert as a Gemma stack: own width, the VLM's layer/head geometry, no vocabulary."""
        return dataclasses.replace(
            self.vlm,
            hidden_size=self.action_expert.hidden_size,
            intermediate_size=self.action_expert.intermediate_size,
            vocab_size=1,
        )

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PiZeroConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(PRESETS))}")
        base = dataclasses.asdict(PRESETS[name])
        return cls(**_deep_update(base, overrides))

    @classmethod
    def from_paligemma(cls, folder: str | Path, **overrides: Any) -> "PiZeroConfig":
        """Vision and VLM dimensions from a PaliGemma checkpoint folder; everything else from `overrides`.

        The folder's config.json is parsed with transformers' PaliGemmaConfig so that keys the file
        leaves at their defaults (head_dim, rope_theta, ...) get transformers' defaults.
        """
        from pg_vla.model.paligemma.hf_config import read_paligemma_dims

        vision, vlm, image_token_id, pad_token_id = read_paligemma_dims(folder)
        base = dataclasses.asdict(cls())
        base.update(
            vision=dataclasses.asdict(vision),
            vlm=dataclasses.asdict(vlm),
            image_token_id=image_token_id,
            pad_token_id=pad_token_id,
        )
        return cls(**_deep_update(base, overrides))

    def with_overrides(self, **overrides: Any) -> "PiZeroConfig":
        """A copy with `overrides` applied (nested sub-configs as dicts); unknown keys raise."""
        return type(self)(**_deep_update(dataclasses.asdict(self), overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PiZeroConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PiZeroConfig keys: {sorted(unknown)}")
        return cls(**data)


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


def _deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if key not in out:
            raise ValueError(f"unknown config key {key!r}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            sub = dict(out[key])
            for sub_key in value:
                if sub_key not in sub:
                    raise ValueError(f"unknown config key {key}.{sub_key!r}")
            sub.update(value)
            out[key] = sub
        elif dataclasses.is_dataclass(value):
            out[key] = dataclasses.asdict(value)
        else:
            out[key] = value
    return out


PRESETS: dict[str, PiZeroConfig] = {
    "pi0": PiZeroConfig(),
    # A few million parameters: fast enough to train for a few steps on a laptop CPU.
    "small": PiZeroConfig(
        vision=VisionConfig(
            hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, patch_size=16, image_size=112
        ),
        vlm=GemmaConfig(
            hidden_size=256,
            intermediate_size=1024,
            num_layers=4,
            num_heads=4,
            num_kv_heads=1,
            head_dim=64,
            vocab_size=1024,
        ),
        action_expert=ActionExpertConfig(hidden_size=128, intermediate_size=512),
        image_token_id=1023,
    ),
    "tiny": PiZeroConfig(
        vision=VisionConfig(
            hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, patch_size=8, image_size=32
        ),
        vlm=GemmaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            vocab_size=512,
        ),
        action_expert=ActionExpertConfig(hidden_size=32, intermediate_size=64),
        image_token_id=511,
        max_text_tokens=8,
    ),
    # open-pi-zero's benchmark geometries (its "tiny" and "small"), for side-by-side speed figures: 1 camera,
    # 20 text tokens, 1 proprio token, horizon 4, 7-D state and actions, 10 flow steps, MLP time conditioning.
    "opz_tiny": PiZeroConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, patch_size=14, image_size=56
        ),
        vlm=GemmaConfig(
            hidden_size=128,
            intermediate_size=512,
            num_layers=2,
            num_heads=4,
            num_kv_heads=1,
            head_dim=32,
            vocab_size=1024,
        ),
        action_expert=ActionExpertConfig(hidden_size=64, intermediate_size=256),
        image_token_id=1023,
    ),
    "opz_small": PiZeroConfig(
        vision=VisionConfig(
            hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6, patch_size=14, image_size=224
        ),
        vlm=GemmaConfig(
            hidden_size=512,
            intermediate_size=2048,
            num_layers=6,
            num_heads=8,
            num_kv_heads=1,
            head_dim=64,
            vocab_size=1024,
        ),
        action_expert=ActionExpertConfig(hidden_size=256, intermediate_size=1024),
        image_token_id=1023,
    ),
}
