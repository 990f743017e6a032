"""pi0's action head: an action expert beside the VLM, trained by flow matching, sampled by Euler steps.

    proprio (B, C, P) -> proprio_encoder -> tokens (B, C, D)  \\  action expert, next to the VLM's
    x_t (B, H, A), t -> action_encoder -> tokens (B, H, D)    /   image/text tokens (pizero.py)
    action tokens' outputs (B, H, D) -> action_decoder -> velocity (B, H, A)
    current proprio token's output (B, D) -> scene_state_decoder -> scene state (B, K)   (scene_state_dim > 0)

The head holds no parameters itself: it adds its modules to the model under pi0's checkpoint names
(`joint.experts.action.*`, `proprio_encoder.*`, `action_encoder.*`, `action_decoder.*`) and runs the
model's passes (`predict_velocity`, `velocity_from_prefix`, `encode_prefix`, `denoise_step`, looked up on the model so
compiled versions are used). Flow matching itself is in flow_matching.py.

Shapes: B batch, H horizon, A action dim, D action-expert hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pg_vla.model.linear import Linear
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.flow_matching import euler_sample, interpolate, sample_time, target_velocity
from pg_vla.model.vla.joint_model import Expert
from pg_vla.model.vla.modules import ActionTimeEncoder, AdaLNActionEncoder

if TYPE_CHECKING:
    from pg_vla.model.vla.pizero import PiZero


class FlowMatchingHead:
    """Flow-matching loss and Euler sampling through pi0's action expert."""

    name = "flow"
    reads_vlm_outputs = False  # action tokens read the VLM's keys and values only

    def __init__(self, config: PiZeroConfig):
        self.config = config

    def experts(self) -> dict[str, Expert]:
        """The experts the joint transformer runs beside the VLM: the action expert (adaLN norms unless
        `time_conditioning=mlp`)."""
        cfg = self.config
        adaln = cfg.time_conditioning != "mlp"
        act_cfg = cfg.action_gemma()
        return {
            "action": Expert(
                act_cfg,
                with_embedding=False,
                cond_dim=act_cfg.hidden_size if adaln else None,
                adaln_zero=cfg.time_conditioning == "adaln_zero",
            )
        }

    def add_modules(self, model: nn.Module) -> None:
        """The proprio encoder, the action/time encoder and the velocity decoder, as attributes of `model`."""
        cfg = self.config
        width = cfg.action_gemma().hidden_size
        model.proprio_encoder = Linear(cfg.proprio_dim, width)
        encoder_cls = ActionTimeEncoder if cfg.time_conditioning == "mlp" else AdaLNActionEncoder
        model.action_encoder = encoder_cls(cfg.action_dim, width, cfg.time_min_period, cfg.time_max_period)
        model.action_decoder = Linear(width, cfg.action_dim)
        if cfg.scene_state_dim:
            model.scene_state_decoder = Linear(width, cfg.scene_state_dim)

    def loss(
        self,
        model: PiZero,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor | None,
        time: torch.Tensor | None,
        action_mask: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        scene_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error of the predicted velocity, plus scene_state_weight x that of the scene-state
        readout when `scene_state` (B, K) is given (see PiZero.forward)."""
        actions = actions.float()
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            cfg = self.config
            time = sample_time(
                actions.shape[0],
                cfg.time_sampling,
                alpha=cfg.time_beta_alpha,
                beta=cfg.time_beta_beta,
                time_max=cfg.time_max,
                device=actions.device,
            )
        x_t = interpolate(actions, noise, time)
        auxiliary = 0.0
        if scene_state is None:
            velocity = model.predict_velocity(images, text_ids, text_mask, proprio, x_t, time, image_mask)
        else:
            prefix = model.embed_prefix(images, text_ids, text_mask, image_mask)
            velocity, hidden = model.velocity_from_prefix(prefix, proprio, x_t, time, return_hidden=True)
            predicted = model.scene_state_decoder(hidden[:, self.config.cond_steps - 1]).float()  # (B, K)
            auxiliary = self.config.scene_state_weight * (predicted - scene_state.float()).pow(2).mean()
        error = (velocity - target_velocity(actions, noise)).pow(2)  # (B, H, A)
        if action_mask is None:
            return error.mean() + auxiliary
        weight = action_mask.to(error.dtype)  # (B, H) chunk steps, or (B, H, A) steps and dims
        weight = (weight.unsqueeze(-1) if weight.ndim == 2 else weight).expand_as(error)
        return (error * weight).sum() / weight.sum().clamp(min=1.0) + auxiliary

    def sample(
        self,
        model: PiZero,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        noise: torch.Tensor | None,
        num_steps: int | None,
        use_cache: bool,
        clip: bool,
        image_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Euler integration from `noise` (drawn if None) -> chunk (B, H, A) float32 (see PiZero.sample_actions)."""
        cfg = self.config
        if noise is None:
            noise = torch.randn(images.shape[0], cfg.horizon_steps, cfg.action_dim, device=images.device)
        num_steps = num_steps or cfg.num_inference_steps
        if use_cache:
            prefix = model.encode_prefix(images, text_ids, text_mask, proprio, image_mask)
            return euler_sample(
                lambda x, t: model.denoise_step(prefix, x, t), noise.float(), num_steps, clip=1.0 if clip else None
            )
        prefix_tokens = model.embed_prefix(images, text_ids, text_mask, image_mask)  # the same at every step
        return euler_sample(
            lambda x, t: model.velocity_from_prefix(prefix_tokens, proprio, x, t),
            noise.float(),
            num_steps,
            clip=1.0 if clip else None,
        )
