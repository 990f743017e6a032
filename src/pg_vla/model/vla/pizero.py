"""pi0: PaliGemma (SigLIP + Gemma) and an action expert, mixed through block-wise attention.

Sequence per sample, and which expert runs each token:

    [ image tokens (num_patches per view) | text (max_text_tokens) | proprio (cond_steps) | actions (horizon) ]
      \\_______________ VLM expert ______________________________/     \\________ action expert ________/
      block 0 (bidirectional prefix)                                   block 1             block 2

With `action_head=discrete` there is no action expert: learned readout tokens follow the prefix in
the VLM expert and an MLP classifies each action dimension into bins (discrete_head.py); the
methods below keep their signatures, so training, validation and `Policy` run either head unchanged.
The head object (`model.head`: FlowMatchingHead in flow_head.py or DiscreteHead), chosen once from
`action_head`, adds its modules to the model and owns the loss and the sampling; `forward` and
`sample_actions` hand over to it.

Views: a sample's images are every camera at each of the cond_steps history frames, frame-major
(oldest frame first, cameras in camera_roles order within a frame), V = num_views of them. Every
method taking images takes `image_mask` (B, V) bool too: the tokens of a view marked False (a camera
the data lacks, a frame before the episode start) are invalid, like text padding; None: all valid.

The mask rule and its picture are in attention_mask.py. Rotary positions count valid tokens only
(text padding and masked views are skipped), so a masked view changes nothing, exactly as if it
were not there, and action tokens sit right after the last real prefix token whatever the padding.
Flow matching follows openpi's convention (flow_matching.py).

Modes, one explicit method each:
    forward(...)         flow-matching loss (training); everything in one pass
                         (discrete head: cross-entropy of the action bins)
    sample_actions(...)  Euler sampling; `use_cache=True` computes the image/text/proprio prefix once
                         (encode_prefix) and runs only action tokens per step (denoise_step)
                         (discrete head: the decoded bins of one pass, noise and steps ignored)
    bin_logits(...)      discrete head only: logits (B, H, A, K) of the action bins
    text_logits(...), generate_text(...)   PaliGemma prefix-LM with the VLM expert alone

Shapes: B batch, V views per sample (num_views), Np patches per view (num_patches), S image size,
L text tokens, C cond steps, H horizon, A action dim, P proprio dim, T tokens, D hidden.

Self-test (run this file):
    uv run src/pg_vla/model/vla/pizero.py                       # sample actions, small config, dummy inputs
    uv run src/pg_vla/model/vla/pizero.py --count_params --config pi0 [--action_head discrete]
    uv run src/pg_vla/model/vla/pizero.py --text_only --load_pretrained_weights \\
        --pretrained_model_path DIR --prompt "caption en" [--image PATH] [--max_tokens N] [--temperature T --top_p P]
    uv run src/pg_vla/model/vla/pizero.py --load_pretrained_weights --pretrained_model_path DIR \\
        --inputs IN.npz --output OUT.npz [--dtype bfloat16]          # velocity + sample, for parity checks
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from pg_vla.model.linear import Linear, linear
from pg_vla.model.paligemma.siglip import SiglipVisionTower
from pg_vla.model.vla.attention_mask import ACTION_BLOCK, IMAGE_TEXT_BLOCK, PROPRIO_BLOCK, mask_and_positions
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.discrete_head import DiscreteHead
from pg_vla.model.vla.flow_head import FlowMatchingHead
from pg_vla.model.vla.flow_matching import interpolate
from pg_vla.model.vla.joint_model import Expert, JointTransformer, KVCache, Segment

INIT_STD = 0.02  # normal init of linear and embedding weights trained from scratch (Gemma's initializer_range)


@dataclass
class PrefixCache:
    """What denoising steps need from the image/text/proprio prefix."""

    kv: KVCache  # per layer (B, K, T_prefix, Dh)
    action_mask: torch.Tensor  # (B, 1, H, T_prefix + H) bool: what the action tokens of every step attend
    action_positions: torch.Tensor  # (B, H) rotary positions of the action tokens

    @property
    def horizon(self) -> int:
        return self.action_positions.shape[1]


class PiZero(nn.Module):
    def __init__(self, config: PiZeroConfig):
        super().__init__()
        self.config = config
        # A plain object, not a submodule: the parameters it uses are the model's own, under pi0's names.
        # The discrete head has no action expert and no flow encoders: nothing left unused (DDP).
        self.head: FlowMatchingHead | DiscreteHead = (
            DiscreteHead if config.action_head == "discrete" else FlowMatchingHead
        )(config)
        self.vision_tower = SiglipVisionTower(config.vision)
        self.multi_modal_projector = Linear(config.vision.hidden_size, config.vlm.hidden_size)
        self.joint = JointTransformer({"vlm": Expert(config.vlm, with_embedding=True), **self.head.experts()})
        self.head.add_modules(self)
        self.apply(self._init_weights)

    @classmethod
    def from_paligemma(cls, folder: str | Path, dtype: torch.dtype | None = None, **config_overrides) -> "PiZero":
        """pi0 whose VLM side (SigLIP, projector, Gemma) comes from a PaliGemma checkpoint folder.

        Dimensions are read from the folder's config.json; `config_overrides` set the rest (cameras,
        horizon, ...). The action expert keeps its fresh initialization.
        """
        from pg_vla.model.paligemma.loading import load_paligemma_weights

        model = cls(PiZeroConfig.from_paligemma(folder, **config_overrides))
        if dtype is not None:
            model = model.to(dtype)
        load_paligemma_weights(model, folder)
        return model

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        verify: bool = True,
        **config_overrides,
    ) -> "PiZero":
        """Any model folder: a pg-vla checkpoint (or run), a pi0 folder (openpi, LeRobot, transformers) or a
        PaliGemma folder (pg_vla.model.pretrained). `config_overrides` set what the weights do not fix;
        verify: check a pg-vla checkpoint against its manifest first."""
        from pg_vla.model.pretrained import load_pretrained

        return load_pretrained(folder, dtype=dtype, device=device, verify=verify, **config_overrides)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and not getattr(module, "_zero_init", False):
            nn.init.normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=INIT_STD)

    # ---- bookkeeping -----------------------------------------------------------------------------
    @property
    def vlm(self) -> Expert:
        return self.joint.experts["vlm"]

    @property
    def action_expert(self) -> Expert:
        self._require_head("flow")
        return self.joint.experts["action"]

    @property
    def is_discrete(self) -> bool:
        return self.head.name == "discrete"

    def _require_head(self, head: str) -> None:
        if self.head.name != head:
            raise RuntimeError(f"this method needs action_head={head!r}; the model has action_head={self.head.name!r}")

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.joint.gradient_checkpointing = enabled
        self.vision_tower.encoder.gradient_checkpointing = enabled

    def frozen_parameter_names(self) -> list[str]:
        """VLM parameters no action output depends on, plus the token embeddings (kept frozen by pi0 training).

        The last VLM layer's queries, output projection, post-attention norm and MLP only produce
        image/text outputs that nothing reads (action tokens read that layer's keys and values), and
        the final norm only serves text generation. The discrete head reads the VLM's own outputs
        (its readout tokens), so there only the token embeddings stay frozen. `freeze_vision` adds
        the whole SigLIP tower.
        """
        names = ["joint.experts.vlm.embed_tokens.weight"]
        if not self.head.reads_vlm_outputs:
            last = f"joint.experts.vlm.layers.{self.config.vlm.num_layers - 1}."
            unread = ("self_attn.q_proj.", "self_attn.o_proj.", "post_attention_layernorm.", "mlp.")
            names.append("joint.experts.vlm.norm.weight")
            names += [n for n, _ in self.named_parameters() if n.startswith(last) and n[len(last) :].startswith(unread)]
        if self.config.freeze_vision:
            names += [n for n, _ in self.named_parameters() if n.startswith("vision_tower.")]
        return names

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; works on the meta device. `action_expert` counts everything outside the
        VLM side: the action expert and its encoders/decoder, or the discrete head."""
        counts = dict.fromkeys(("vision", "projector", "vlm", "action_expert"), 0)
        for name, p in self.named_parameters():
            if name.startswith("vision_tower."):
                counts["vision"] += p.numel()
            elif name.startswith("multi_modal_projector."):
                counts["projector"] += p.numel()
            elif name.startswith("joint.experts.vlm."):
                counts["vlm"] += p.numel()
            else:
                counts["action_expert"] += p.numel()
        params = dict(self.named_parameters())
        frozen = sum(params[n].numel() for n in self.frozen_parameter_names())
        counts["vlm_trainable"] = counts["vision"] + counts["projector"] + counts["vlm"] - frozen
        counts["total"] = counts["vision"] + counts["projector"] + counts["vlm"] + counts["action_expert"]
        return counts

    # ---- embeddings ----------------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, S, S) in [-1, 1] -> image tokens (B, V*Np, D_vlm), view after view."""
        if images.ndim != 5:
            raise ValueError(f"images must be (batch, views, 3, H, W), got shape {tuple(images.shape)}")
        b, n = images.shape[:2]
        feats = self.vision_tower(images.flatten(0, 1))  # (B*V, Np, Dv)
        tokens = self.multi_modal_projector(feats)  # (B*V, Np, D)
        return tokens.reshape(b, n * tokens.shape[1], tokens.shape[2])

    def embed_prefix(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, V, 3, S, S), text_ids / text_mask (B, L), image_mask (B, V) bool or None (all views valid)
        -> prefix tokens (B, V*Np + L, D_vlm), valid (B, V*Np + L) bool (False: text padding and every token
        of a masked view), blocks (B, V*Np + L) long (all IMAGE_TEXT_BLOCK)."""
        cfg = self.config
        if images.ndim != 5 or images.shape[1] != cfg.num_views:
            raise ValueError(
                f"images must be (batch, {cfg.num_views} views = {cfg.num_cameras} cameras x {cfg.cond_steps} "
                f"frames, 3, H, W), got shape {tuple(images.shape)}"
            )
        if text_ids.ndim != 2 or text_ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"text_ids must be (batch, tokens) with batch {images.shape[0]}, got {tuple(text_ids.shape)}"
            )
        image_tokens = self.embed_images(images)
        text_tokens = self.vlm.embed_tokens(text_ids)
        tokens = torch.cat((image_tokens.to(text_tokens.dtype), text_tokens), dim=1)
        if text_mask is None:
            text_mask = torch.ones_like(text_ids, dtype=torch.bool)
        image_valid = self._image_token_valid(image_mask, images.shape[0], tokens.device)  # (B, V*Np)
        valid = torch.cat((image_valid, text_mask.bool()), dim=1)
        return tokens, valid, torch.full_like(valid, IMAGE_TEXT_BLOCK, dtype=torch.long)

    def _image_token_valid(self, image_mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """image_mask (B, V) bool or None -> valid flags (B, V*Np) of the image tokens (a view's flag for each
        of its Np patches)."""
        cfg = self.config
        v, p = cfg.num_views, cfg.vision.num_patches
        if image_mask is None:
            return torch.ones(batch, v * p, dtype=torch.bool, device=device)
        if image_mask.shape != (batch, v) or image_mask.dtype != torch.bool:
            raise ValueError(
                f"image_mask must be (batch, V) = ({batch}, {v}) bool (V = {cfg.num_cameras} cameras x "
                f"{cfg.cond_steps} frames), got {image_mask.dtype} of shape {tuple(image_mask.shape)}"
            )
        return image_mask.to(device).repeat_interleave(p, dim=1)

    def embed_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """proprio (B, C, P) -> (B, C, D_action); zeros in, the encoder's bias out, when not config.use_proprio."""
        c, p = self.config.cond_steps, self.config.proprio_dim
        if proprio.ndim != 3 or proprio.shape[1:] != (c, p):
            raise ValueError(f"proprio must be (batch, {c}, {p}), got {tuple(proprio.shape)}")
        proprio = proprio.to(self.proprio_encoder.weight.dtype)
        if not self.config.use_proprio:
            proprio = torch.zeros_like(proprio)
        return self.proprio_encoder(proprio)

    def embed_actions(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """noisy actions (B, H, A), t (B,) -> tokens (B, H, D_action), adaLN conditioning (B, D_action) or None."""
        h, a = self.config.horizon_steps, self.config.action_dim
        if x_t.ndim != 3 or x_t.shape[1:] != (h, a):
            raise ValueError(f"actions must be (batch, {h}, {a}), got {tuple(x_t.shape)}")
        return self.action_encoder(x_t.to(self.action_decoder.weight.dtype), t)

    def embed_suffix(
        self, proprio: torch.Tensor | None, x_t: torch.Tensor | None, t: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[list[Segment], torch.Tensor, torch.Tensor]:
        """The action expert's tokens: proprio (B, C, P) and/or noisy actions x_t (B, H, A) at flow time t (B,).

        -> segments (tokens in `dtype`, the prefix's; adaLN conditioning on the action segment), valid
        (B, C + H) bool, blocks (B, C + H) long (PROPRIO_BLOCK, then ACTION_BLOCK). Either input may be None:
        the KV-cached prefix holds proprio alone, each denoising step the actions alone.
        """
        tokens, blocks, cond = [], [], None
        if proprio is not None:
            tokens.append(self.embed_proprio(proprio).to(dtype))
            blocks.append(torch.full(tokens[-1].shape[:2], PROPRIO_BLOCK, dtype=torch.long, device=tokens[-1].device))
        if x_t is not None:
            action_tokens, cond = self.embed_actions(x_t, t)
            tokens.append(action_tokens.to(dtype))
            blocks.append(torch.full(tokens[-1].shape[:2], ACTION_BLOCK, dtype=torch.long, device=tokens[-1].device))
        if cond is None:  # pi0's MLP time conditioning: proprio and actions go through the expert together
            segments = [Segment("action", torch.cat(tokens, dim=1))]
        else:
            segments = [Segment("action", x) for x in tokens[:-1]] + [Segment("action", tokens[-1], cond=cond)]
        blocks = torch.cat(blocks, dim=1)
        return segments, torch.ones_like(blocks, dtype=torch.bool), blocks

    # ---- training ----------------------------------------------------------------------------------
    def predict_velocity(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One full pass over all tokens (no cache) -> velocity (B, H, A) in float32."""
        return self.velocity_from_prefix(self.embed_prefix(images, text_ids, text_mask, image_mask), proprio, x_t, t)

    def velocity_from_prefix(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        proprio: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`predict_velocity` from the embedded prefix (`embed_prefix`'s tokens, valid, blocks): every layer runs
        over the image/text tokens and the proprio and action tokens. Uncached sampling embeds the prefix
        (the vision tower) once and calls this at every flow step. return_hidden: also the action expert's
        final outputs (B, C + H, D_action) of the proprio and action tokens (the scene-state readout's input)."""
        self._require_head("flow")
        outputs, _, _, _ = self._joint_pass(prefix, proprio, x_t, t)
        velocity = self.action_decoder(outputs[-1][:, -x_t.shape[1] :]).float()
        if not return_hidden:
            return velocity
        return velocity, outputs[1] if len(outputs) == 2 else torch.cat(outputs[1:], dim=1)

    @torch.no_grad()
    def predict_scene_state(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scene-state readout (B, K) float32 (normalized like the data's scene state): the current proprio
        token's final output through `scene_state_decoder`. It attends to the prefix and the proprio tokens only,
        so no action tokens are needed."""
        self._require_head("flow")
        if not self.config.scene_state_dim:
            raise RuntimeError("this model has no scene-state readout (scene_state_dim=0)")
        prefix = self.embed_prefix(images, text_ids, text_mask, image_mask)
        outputs, _, _, _ = self._joint_pass(prefix, proprio, None, None)
        return self.scene_state_decoder(outputs[-1][:, -1]).float()

    def _joint_pass(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        proprio: torch.Tensor | None,
        x_t: torch.Tensor | None,
        t: torch.Tensor | None,
        suffix_outputs: bool = True,
        return_cache: bool = False,
    ) -> tuple[list[torch.Tensor | None], KVCache | None, torch.Tensor, torch.Tensor]:
        """The embedded prefix and `embed_suffix(proprio, x_t, t)` through the joint transformer under the block
        mask -> each segment's outputs (the VLM's None; the suffix's too unless `suffix_outputs`), the cache
        (with `return_cache`), and the valid flags and blocks (B, T) of all the tokens."""
        tokens, prefix_valid, prefix_blocks = prefix
        suffix, suffix_valid, suffix_blocks = self.embed_suffix(proprio, x_t, t, tokens.dtype)
        if not suffix_outputs:
            suffix = [replace(s, needs_output=False) for s in suffix]
        valid = torch.cat((prefix_valid, suffix_valid), dim=1)
        blocks = torch.cat((prefix_blocks, suffix_blocks), dim=1)
        mask, positions = mask_and_positions(valid, blocks)
        segments = [Segment("vlm", tokens, needs_output=False), *suffix]
        outputs, kv = self.joint(segments, positions, mask, return_cache=return_cache)
        return outputs, kv, valid, blocks

    def forward(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        scene_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss: mean squared error of the predicted velocity. actions (B, H, A) normalized.
        `scene_state` (B, K) normalized (models with a scene-state readout): adds scene_state_weight x the mean
        squared error of the readout (`predict_scene_state`).

        `action_mask` (B, H) bool leaves out padded chunk steps (past an episode's end), (B, H, A) also
        padded action dims (data with fewer dims than pi0's 32); `noise`
        (B, H, A) and `time` (B,) pin the randomness (tests); drawn when not given. `image_mask` (B, V)
        bool: the views to read (None: all).
        Discrete head: the cross-entropy of the action bins instead (`noise` and `time` are ignored).
        In training mode, config.proprio_dropout of the samples see zeros for their proprio.
        """
        if self.training and self.config.proprio_dropout > 0:
            dropped = torch.rand(proprio.shape[0], 1, 1, device=proprio.device) < self.config.proprio_dropout
            proprio = torch.where(dropped, torch.zeros_like(proprio), proprio)
        if scene_state is not None:
            k = self.config.scene_state_dim
            if not k:
                raise ValueError("scene_state given, but this model has no scene-state readout (scene_state_dim=0)")
            if scene_state.shape != (proprio.shape[0], k):
                raise ValueError(f"scene_state must be (batch, {k}), got {tuple(scene_state.shape)}")
            return self.head.loss(
                self, images, text_ids, text_mask, proprio, actions, noise, time, action_mask, image_mask, scene_state
            )
        return self.head.loss(self, images, text_ids, text_mask, proprio, actions, noise, time, action_mask, image_mask)

    # ---- KV-cached inference -----------------------------------------------------------------------
    def encode_prefix(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> PrefixCache:
        """Image, text and proprio tokens through both experts once; keeps every layer's keys/values."""
        self._require_head("flow")
        prefix = self.embed_prefix(images, text_ids, text_mask, image_mask)
        _, kv, valid, blocks = self._joint_pass(prefix, proprio, None, None, suffix_outputs=False, return_cache=True)
        # The action tokens' mask and positions are the same at every flow step: built once here,
        # not in the denoising loop.
        b, h, device = valid.shape[0], self.config.horizon_steps, valid.device
        action_blocks = torch.full((b, h), ACTION_BLOCK, dtype=torch.long, device=device)
        action_mask, action_positions = mask_and_positions(
            torch.ones_like(action_blocks, dtype=torch.bool), action_blocks, valid, blocks
        )
        return PrefixCache(kv=kv, action_mask=action_mask, action_positions=action_positions)

    def denoise_step(self, prefix: PrefixCache, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Action tokens x_t (B, H, A) at flow time t (B,), against the cached prefix -> velocity (B, H, A)
        in float32."""
        self._require_head("flow")
        if x_t.shape[1] != prefix.horizon:
            raise ValueError(f"x_t has {x_t.shape[1]} action steps, the prefix cache was built for {prefix.horizon}")
        suffix, _, _ = self.embed_suffix(None, x_t, t, prefix.kv.keys[0].dtype)
        outputs, _ = self.joint(suffix, prefix.action_positions, prefix.action_mask, past=prefix.kv)
        return self.action_decoder(outputs[0]).float()

    @torch.no_grad()
    def sample_actions(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        use_cache: bool = True,
        clip: bool = True,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalized action chunk (B, H, A) in [-1, 1], integrated from `noise` (drawn if None); `clip=False`
        returns the integral as it is (pi0's own sampler does not clip). `image_mask` (B, V) bool: the views
        to read (None: all).

        Discrete head: the decoded bins (`discrete_decoding`) of one pass; noise, steps and cache unused.
        """
        return self.head.sample(
            self, images, text_ids, text_mask, proprio, noise, num_steps, use_cache, clip, image_mask
        )

    # ---- discrete head ---------------------------------------------------------------------------------
    def bin_logits(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Discrete head: logits (B, H, A, K) float32 of each action dimension's bins.

        [image | text | readout (H)] through the VLM expert; readout tokens form their own block after
        the prefix (they see it, it does not see them) and sit right after the last valid text token.
        """
        self._require_head("discrete")
        cfg = self.config
        if proprio.ndim != 3 or proprio.shape[1:] != (cfg.cond_steps, cfg.proprio_dim):
            raise ValueError(
                f"proprio must be (batch, {cfg.cond_steps}, {cfg.proprio_dim}), got {tuple(proprio.shape)}"
            )
        prefix, prefix_valid, prefix_blocks = self.embed_prefix(images, text_ids, text_mask, image_mask)  # (B, T, D)
        readout = self.action_decoder.readout_tokens(prefix.shape[0]).to(prefix.dtype)  # (B, H, D)
        readout_blocks = torch.full(readout.shape[:2], ACTION_BLOCK, dtype=torch.long, device=prefix.device)
        mask, positions = mask_and_positions(
            torch.cat((prefix_valid, torch.ones_like(readout_blocks, dtype=torch.bool)), dim=1),
            torch.cat((prefix_blocks, readout_blocks), dim=1),
        )
        segments = [Segment("vlm", prefix, needs_output=False), Segment("vlm", readout)]
        outputs, _ = self.joint(segments, positions, mask)
        return self.action_decoder(outputs[-1], proprio)  # (B, H, A, K)

    def action_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """Discrete head: normalized actions (..., A) -> their bin indices (..., A) long."""
        self._require_head("discrete")
        return self.action_decoder.to_bins(actions)

    def decode_bin_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Discrete head: logits (B, H, A, K) -> the chunk `sample_actions` returns (B, H, A) float32."""
        self._require_head("discrete")
        return self.action_decoder.decode(logits)

    # ---- text mode (VLM expert alone) ----------------------------------------------------------------
    def _lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, vocab); the LM head is tied to the token embeddings."""
        return linear(hidden, self.vlm.embed_tokens.weight)

    def text_logits(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        return_cache: bool = False,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None, torch.Tensor]:
        """PaliGemma prefix-LM over image + text (bidirectional).

        -> logits (B, V*Np + L, vocab) at every position, the cache if asked, and valid (B, V*Np + L).
        """
        prefix, valid, blocks = self.embed_prefix(images, text_ids, text_mask, image_mask)
        mask, positions = mask_and_positions(valid, blocks)
        outputs, kv = self.joint([Segment("vlm", prefix)], positions, mask, return_cache=return_cache)
        return self._lm_logits(outputs[0]), kv, valid

    @torch.no_grad()
    def generate_text(
        self,
        images: torch.Tensor,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        temperature: float | None = None,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue unpadded prompts (B, L) after the images (B, V, 3, S, S); greedy unless `temperature` is
        given. `image_mask` (B, V) bool: the views to read (None: all).

        Returns the new tokens (B, <= max_new_tokens); a sequence that emitted `eos_token_id` is
        padded with it until all have finished.
        """
        logits, kv, key_valid = self.text_logits(images, prompt_ids, None, return_cache=True, image_mask=image_mask)
        b, device = prompt_ids.shape[0], prompt_ids.device
        key_blocks = torch.full_like(key_valid, IMAGE_TEXT_BLOCK, dtype=torch.long)  # (B, T) of the cached keys
        next_logits = logits[:, -1]
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        generated: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            token = _choose_token(next_logits, temperature, top_p, generator)  # (B,)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            generated.append(token)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            # The new token opens its own block: it sees the whole prefix and earlier tokens.
            new_blocks = torch.full((b, 1), IMAGE_TEXT_BLOCK + step + 1, dtype=torch.long, device=device)
            new_valid = torch.ones_like(new_blocks, dtype=torch.bool)
            mask, positions = mask_and_positions(new_valid, new_blocks, key_valid, key_blocks)
            outputs, new_kv = self.joint(
                [Segment("vlm", self.vlm.embed_tokens(token[:, None]))], positions, mask, past=kv, return_cache=True
            )
            kv = kv.extend(new_kv)
            key_valid, key_blocks = torch.cat((key_valid, new_valid), dim=1), torch.cat((key_blocks, new_blocks), dim=1)
            next_logits = self._lm_logits(outputs[0])[:, -1]
        return torch.stack(generated, dim=1)


def _choose_token(
    logits: torch.Tensor, temperature: float | None, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,): arg-max, or nucleus sampling at `temperature`."""
    if temperature is None or temperature == 0.0:
        return logits.argmax(dim=-1)
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set of top tokens whose mass reaches top_p (always at least the first).
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1) index into sorted order
    return order.gather(-1, choice).squeeze(-1)


# ---- self-test -----------------------------------------------------------------------------------------
def _count_params(config_name: str, action_head: str = "flow") -> None:
    import json

    with torch.device("meta"):
        model = PiZero(PiZeroConfig.preset(config_name, action_head=action_head))
    print(json.dumps(model.parameter_counts()))


def _sample_dummy(config_name: str, seed: int, action_head: str = "flow") -> None:
    torch.manual_seed(seed)
    cfg = PiZeroConfig.preset(config_name, action_head=action_head)
    model = PiZero(cfg).eval()
    b = 2
    images = torch.rand(b, cfg.num_views, 3, cfg.vision.image_size, cfg.vision.image_size) * 2 - 1
    text_ids = torch.randint(0, cfg.vlm.vocab_size, (b, cfg.max_text_tokens))
    text_mask = torch.arange(cfg.max_text_tokens).expand(b, -1) < torch.tensor([[cfg.max_text_tokens], [3]])
    proprio = torch.rand(b, cfg.cond_steps, cfg.proprio_dim) * 2 - 1
    actions = model.sample_actions(images, text_ids, text_mask, proprio)
    print(
        f"config {config_name}: sampled action chunk of shape {tuple(actions.shape)} "
        f"(batch, horizon, action_dim), range [{actions.min().item():.3f}, {actions.max().item():.3f}]"
    )


def _generate_text(args) -> None:
    from pg_vla.model.paligemma.processing import VLAProcessor

    if not args.load_pretrained_weights or not args.pretrained_model_path:
        raise SystemExit("--text_only needs --load_pretrained_weights and --pretrained_model_path DIR")
    folder = Path(args.pretrained_model_path)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = PiZero.from_paligemma(folder, dtype=dtype).eval()
    size = model.config.vision.image_size
    processor = VLAProcessor.from_pretrained(folder, max_text_tokens=model.config.max_text_tokens, image_size=size)
    if args.image:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:  # no image given: a mid-gray frame
        import numpy as np

        image = np.full((size, size, 3), 128, dtype=np.uint8)
    pixels = processor.preprocess_images(image)  # (1, 1, 3, S, S)
    prompt_ids = processor.generation_prompt_ids(args.prompt)
    generator = torch.Generator().manual_seed(args.seed)
    tokens = model.generate_text(
        pixels.to(dtype),
        prompt_ids,
        args.max_tokens,
        eos_token_id=processor.tokenizer.eos_token_id,
        temperature=args.temperature,
        top_p=args.top_p,
        generator=generator,
    )
    # The generated text is the last line of stdout; line breaks inside it are printed as "\\n".
    print(processor.decode(tokens[0]).replace("\n", "\\n"))


PARITY_INPUTS = {  # name -> (ndim, kind) of the --inputs npz arrays
    "images": (5, "f"),
    "text_ids": (2, "i"),
    "text_mask": (2, "b"),
    "state": (2, "f"),
    "noise": (3, "f"),
    "actions": (3, "f"),
    "time": (1, "f"),
}


def _parity_io(args) -> None:
    """--inputs IN.npz -> --output OUT.npz with the velocity at x_t and the unclipped Euler sample."""
    import numpy as np

    if not args.load_pretrained_weights or not args.pretrained_model_path:
        raise ValueError("--inputs needs --load_pretrained_weights and --pretrained_model_path DIR")
    if not args.output:
        raise ValueError("--inputs needs --output OUT.npz")
    try:
        with np.load(args.inputs) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read --inputs {args.inputs}: {err}") from err
    for name, (ndim, kind) in PARITY_INPUTS.items():
        if name not in arrays:
            raise ValueError(f"{args.inputs} lacks {name!r}; it needs {sorted(PARITY_INPUTS)}")
        value = arrays[name]
        if value.ndim != ndim or value.dtype.kind != kind and not (kind == "i" and value.dtype.kind == "u"):
            kind_name = dict(f="float", i="integer", b="bool")[kind]
            raise ValueError(
                f"{args.inputs}: {name!r} must be a {ndim}-d {kind_name}"
                f" array, got {value.dtype} of shape {value.shape}"
            )
    b, n, _, size, _ = arrays["images"].shape
    length, (h, a), p = arrays["text_ids"].shape[1], arrays["noise"].shape[1:], arrays["state"].shape[1]
    expected = {
        "images": (b, n, 3, size, size),
        "text_ids": (b, length),
        "text_mask": (b, length),
        "state": (b, p),
        "noise": (b, h, a),
        "actions": (b, h, a),
        "time": (b,),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"{args.inputs}: {name!r} has shape {arrays[name].shape}, the other inputs imply {shape}")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = PiZero.from_pretrained(args.pretrained_model_path, dtype=dtype, num_cameras=n, horizon_steps=h)
    cfg = model.config
    if model.is_discrete:
        raise ValueError(
            f"{args.pretrained_model_path} has the discrete action head; --inputs compares flow velocities"
        )
    checks = [
        ("image size", size, cfg.vision.image_size),
        ("action dim", a, cfg.action_dim),
        ("state dim", p, cfg.proprio_dim),
    ]
    for what, got, want in checks:
        if got != want:
            raise ValueError(f"{args.inputs}: {what} {got} does not match the checkpoint's {want}")
    if length > cfg.max_text_tokens:
        raise ValueError(f"{args.inputs}: {length} text tokens exceed the checkpoint's {cfg.max_text_tokens}")
    t = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}
    images, text_ids, text_mask = t["images"].to(dtype), t["text_ids"].long(), t["text_mask"]
    proprio, time = t["state"].float()[:, None], t["time"].float()
    noise, actions = t["noise"].float(), t["actions"].float()
    with torch.no_grad():
        velocity = model.predict_velocity(images, text_ids, text_mask, proprio, interpolate(actions, noise, time), time)
        sampled = model.sample_actions(images, text_ids, text_mask, proprio, noise=noise, clip=False)
    np.savez(args.output, velocity=velocity.float().numpy(), sampled=sampled.float().numpy())
    print(f"wrote {args.output}: velocity and sampled of shape {tuple(velocity.shape)}")


def main(argv: list[str] | None = None) -> int:
    """The self-test command; bad input (missing folder, mismatched inputs, ...) -> `error: ...`, status 2."""
    import argparse

    parser = argparse.ArgumentParser(
        description="pi0 model self-test: action sampling, text generation, parameter counts."
    )
    parser.add_argument("--config", default="small", help="model preset (pi0, small, tiny)")
    parser.add_argument("--count_params", action="store_true", help="print parameter counts (meta device) as JSON")
    parser.add_argument(
        "--action_head",
        choices=("flow", "discrete"),
        default="flow",
        help="flow matching (pi0) or the discrete bin-classification head",
    )
    parser.add_argument("--text_only", action="store_true", help="generate text with a PaliGemma checkpoint")
    parser.add_argument("--load_pretrained_weights", action="store_true")
    parser.add_argument("--pretrained_model_path", default=None)
    parser.add_argument("--prompt", default="caption en")
    parser.add_argument("--image", default=None, help="image file (default: a gray frame)")
    parser.add_argument("--max_tokens", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default greedy)")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--inputs",
        default=None,
        help="npz of images, text_ids, text_mask, state, noise, actions, "
        "time: write --output with the velocity at x_t and the 10-step sample (no clipping)",
    )
    parser.add_argument("--output", default=None, help="npz to write with --inputs")
    args = parser.parse_args(argv)
    try:
        if args.inputs:
            _parity_io(args)
        elif args.count_params:
            _count_params(args.config, args.action_head)
        elif args.text_only:
            _generate_text(args)
        else:
            _sample_dummy(args.config, args.seed, args.action_head)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
