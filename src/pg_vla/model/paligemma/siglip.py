"""SigLIP vision tower as PaliGemma uses it: patch embedding, pre-norm ViT encoder, final LayerNorm.

No pooling head: every patch becomes one image token. Shapes: B images, P patches, D vision hidden.
Module names follow the checkpoint's `vision_tower.vision_model.*` layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pg_vla.model.linear import Linear, linear
from pg_vla.model.vla.config import VisionConfig


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [-1, 1] -> (B, P, D).

        The stride-p convolution is computed as what it is, one matmul of the flattened patches
        (B, P, 3*p*p) with the kernel (D, 3*p*p): the checkpoint keeps the convolution's layout.
        """
        conv = self.patch_embedding
        p = conv.kernel_size[0]
        patches = rearrange(pixels.to(conv.weight.dtype), "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        return linear(patches, conv.weight.flatten(1), conv.bias) + self.position_embedding.weight.unsqueeze(0)


class SiglipAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        d = config.hidden_size
        self.q_proj = Linear(d, d)
        self.k_proj = Linear(d, d)
        self.v_proj = Linear(d, d)
        self.out_proj = Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, P, D) -> (B, P, D); every patch attends to every patch."""
        q, k, v = (
            rearrange(proj(x), "b p (h e) -> b h p e", h=self.num_heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(rearrange(out, "b h p e -> b p (h e)"))


class SiglipMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class SiglipVisionTower(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) normalized to [-1, 1] -> patch features (B, P, D)."""
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise ValueError(f"vision tower expects images of shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        return self.post_layernorm(self.encoder(self.embeddings(pixels)))
