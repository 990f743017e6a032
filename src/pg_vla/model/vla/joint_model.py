"""The joint transformer: two experts, one layer stack, attention shared over all tokens.

Each expert (the VLM and the action expert) has its own weights in every layer: norms, Q/K/V/O
projections and MLP. In layer l every expert projects its own tokens to queries, keys and values;
attention then runs once over the concatenated sequence under the block mask of
`attention_mask.py`; each expert applies its own output projection and MLP to its tokens. The
experts must share the layer geometry (layers, heads, KV heads, head dim); widths may differ.

The input is a list of `Segment`s: runs of consecutive tokens, each handled by one expert. Modes:

    training / uncached sampling   [vlm: image+text] [action: proprio+actions]
    prefix (KV-cached inference)   [vlm: image+text] [action: proprio]        -> KVCache
    denoising step                 [action: actions] against a KVCache
    text generation                [vlm: prompt] then [vlm: one token] against a growing KVCache

A segment with `needs_output=False` computes only keys and values in the last layer (its queries,
output projection and MLP there feed nothing), which is how the VLM's unread last-layer parts are
skipped.

Shapes: B batch, T tokens, D hidden (per expert), H query heads, K KV heads, Dh head dim, L layers.
Run this file to print the block mask and attend over dummy embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from pg_vla.model.linear import Linear
from pg_vla.model.paligemma.gemma import (
    AdaptiveRMSNorm,
    GatedMLP,
    RMSNorm,
    RotaryEmbedding,
    TokenEmbedding,
    apply_rotary,
)
from pg_vla.model.vla.config import GemmaConfig


@dataclass
class Segment:
    """Consecutive tokens processed by one expert."""

    expert: str  # key in JointTransformer.experts: "vlm" or "action"
    hidden: torch.Tensor  # (B, T_s, D_expert)
    cond: torch.Tensor | None = None  # (B, C) adaLN conditioning (action tokens with adaLN time conditioning)
    needs_output: bool = True  # False: last layer computes keys/values only; no output returned


@dataclass
class KVCache:
    """Keys (rotary applied) and values of earlier tokens, one entry per layer: (B, K, T, Dh)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def extend(self, other: "KVCache") -> "KVCache":
        """A new cache with `other`'s tokens appended (the inputs are left untouched)."""
        return KVCache(
            [torch.cat(p, dim=2) for p in zip(self.keys, other.keys)],
            [torch.cat(p, dim=2) for p in zip(self.values, other.values)],
        )


def fold_query_groups(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """mask (B, 1, Tq, Tk) bool -> (B, 1, groups * Tq, Tk): the mask of `grouped_query_attention`, whose
    query axis holds the `groups` query heads that share a KV head one after the other."""
    if groups == 1:
        return mask
    b, _, tq, tk = mask.shape
    return mask.unsqueeze(2).expand(b, 1, groups, tq, tk).reshape(b, 1, groups * tq, tk)


def additive_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """mask bool (True = may attend) -> the same mask as an additive bias in `dtype`: 0 where allowed, -inf
    elsewhere. scaled_dot_product_attention turns a bool mask into exactly this on every call; built
    once per forward, it is not rebuilt in every layer (on CPU that conversion took half the time of the
    attention itself)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, folded_mask: torch.Tensor
) -> torch.Tensor:
    """Softmax attention where each KV head serves G = H / K query heads (Gemma-2B: 8 query heads, 1 KV head).

    q (B, H, Tq, Dh), k and v (B, K, Tk, Dh), folded_mask = fold_query_groups(mask (B, 1, Tq, Tk), G): bool
    (True = may attend) or its `additive_bias` -> (B, H, Tq, Dh). Query head h reads KV head h // G. The G
    query heads of a group are folded into the query axis, (B, H, Tq, Dh) -> (B, K, G * Tq, Dh), so the keys
    and values are never repeated per head and one ordinary masked attention call (any fused backend that
    takes a mask) does the work. The folded mask is the same in every layer: the caller folds it once.
    """
    b, h, tq, dh = q.shape
    kv_heads = k.shape[1]
    if h % kv_heads:
        raise ValueError(f"{h} query heads cannot share {kv_heads} KV heads evenly")
    out = F.scaled_dot_product_attention(q.reshape(b, kv_heads, (h // kv_heads) * tq, dh), k, v, attn_mask=folded_mask)
    return out.reshape(b, h, tq, dh)


class AttentionProjections(nn.Module):
    def __init__(self, hidden_size: int, cfg: GemmaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Linear(hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = Linear(hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, hidden_size, bias=False)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, Dh)"""
        return rearrange(self.q_proj(x), "b t (h e) -> b h t e", e=self.head_dim)

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> keys, values (B, K, T, Dh)"""
        return (
            rearrange(self.k_proj(x), "b t (k e) -> b k t e", e=self.head_dim),
            rearrange(self.v_proj(x), "b t (k e) -> b k t e", e=self.head_dim),
        )


class ExpertLayer(nn.Module):
    """One Gemma decoder layer of one expert (pre-norm attention + pre-norm GeGLU MLP)."""

    def __init__(self, cfg: GemmaConfig, cond_dim: int | None = None, adaln_zero: bool = False):
        super().__init__()
        if cond_dim is None:
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        else:
            self.input_layernorm = AdaptiveRMSNorm(cfg.hidden_size, cond_dim, cfg.rms_norm_eps, zero=adaln_zero)
            self.post_attention_layernorm = AdaptiveRMSNorm(
                cfg.hidden_size, cond_dim, cfg.rms_norm_eps, zero=adaln_zero
            )
        self.self_attn = AttentionProjections(cfg.hidden_size, cfg)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def norm(
        self, which: RMSNorm, x: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(which, AdaptiveRMSNorm):
            return which.modulate(x, cond)
        return which(x), None

    def attention_inputs(
        self, x: torch.Tensor, cond: torch.Tensor | None, need_query: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> (attention gate or None, keys, values (B, K, T, Dh), queries (B, H, T, Dh) or None),
        before rotary embedding. With `finish`, the two entry points a joint layer calls (FSDP hooks both)."""
        normed, gate = self.norm(self.input_layernorm, x, cond)
        k, v = self.self_attn.key_value(normed)
        return gate, k, v, (self.self_attn.query(normed) if need_query else None)

    def finish(
        self, x: torch.Tensor, attn: torch.Tensor, cond: torch.Tensor | None, attn_gate: torch.Tensor | None
    ) -> torch.Tensor:
        """Residual stream after attention: x (B, T, D), attn (B, T, H*Dh) -> (B, T, D)."""
        out = self.self_attn.o_proj(attn)
        x = x + (out if attn_gate is None else attn_gate * out)
        normed, mlp_gate = self.norm(self.post_attention_layernorm, x, cond)
        out = self.mlp(normed)
        return x + (out if mlp_gate is None else mlp_gate * out)


class Expert(nn.Module):
    """A Gemma stack: optional token embedding, L layers, final norm."""

    def __init__(self, cfg: GemmaConfig, with_embedding: bool, cond_dim: int | None = None, adaln_zero: bool = False):
        super().__init__()
        self.config = cfg
        self.embed_tokens = TokenEmbedding(cfg.vocab_size, cfg.hidden_size) if with_embedding else None
        self.layers = nn.ModuleList(ExpertLayer(cfg, cond_dim, adaln_zero) for _ in range(cfg.num_layers))
        if cond_dim is None:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        else:
            self.norm = AdaptiveRMSNorm(cfg.hidden_size, cond_dim, cfg.rms_norm_eps, zero=False)

    def final_norm(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.norm, AdaptiveRMSNorm):
            return self.norm.modulate(x, cond)[0]
        return self.norm(x)


class JointTransformer(nn.Module):
    def __init__(self, experts: dict[str, Expert]):
        super().__init__()
        geometry = {
            (e.config.num_layers, e.config.num_heads, e.config.num_kv_heads, e.config.head_dim, e.config.rope_theta)
            for e in experts.values()
        }
        if len(geometry) != 1:
            raise ValueError(
                "experts must share num_layers, num_heads, num_kv_heads, head_dim and rope_theta, got "
                + ", ".join(f"{k}: {e.config}" for k, e in experts.items())
            )
        self.experts = nn.ModuleDict(experts)
        cfg = next(iter(experts.values())).config
        self.num_layers = cfg.num_layers
        self.query_groups = cfg.num_heads // cfg.num_kv_heads
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False

    def forward(
        self,
        segments: list[Segment],
        positions: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
        return_cache: bool = False,
    ) -> tuple[list[torch.Tensor | None], KVCache | None]:
        """Run all layers.

        positions (B, T) for the T new tokens (all segments concatenated); attn_mask (B, 1, T, T_past + T)
        bool; `past` holds keys/values of T_past earlier tokens. Returns each segment's final-normed
        hidden states (B, T_s, D_s) (None where needs_output=False) and, if asked, the new tokens' cache.
        """
        total = sum(s.hidden.shape[1] for s in segments)
        if positions.shape[1] != total:
            raise ValueError(f"positions cover {positions.shape[1]} tokens, segments hold {total}")
        expected_keys = total + (past.length if past is not None else 0)
        if attn_mask.shape[-2:] != (total, expected_keys):
            raise ValueError(
                f"attention mask {tuple(attn_mask.shape)} does not fit {total} queries x {expected_keys} keys"
            )
        dtype = segments[0].hidden.dtype
        cos, sin = self.rotary(positions, dtype)  # (B, 1, T, Dh)
        hidden = [s.hidden for s in segments]
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        folded_masks: dict[tuple, torch.Tensor] = {}  # query rows -> folded mask as a bias, built once for all layers
        for layer_idx in range(self.num_layers):
            last = layer_idx == self.num_layers - 1
            past_kv = None if past is None else (past.keys[layer_idx], past.values[layer_idx])
            args = (layer_idx, segments, hidden, cos, sin, attn_mask, folded_masks, past_kv, last)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden, k, v = checkpoint(self._layer, *args, use_reentrant=False)
            else:
                hidden, k, v = self._layer(*args)
            if return_cache:
                keys.append(k)
                values.append(v)
        outputs = [
            self.experts[s.expert].final_norm(h, s.cond) if h is not None else None for s, h in zip(segments, hidden)
        ]
        return outputs, (KVCache(keys, values) if return_cache else None)

    def _layer(
        self,
        layer_idx: int,
        segments: list[Segment],
        hidden: list[torch.Tensor | None],
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor,
        folded_masks: dict[tuple, torch.Tensor],
        past_kv: tuple[torch.Tensor, torch.Tensor] | None,
        last: bool,
    ):
        """One joint layer. Returns (new hidden per segment, this layer's new keys, values (B, K, T, Dh))."""
        queries, keys, values, gates, query_rows = [], [], [], [], []
        start = 0
        for seg, x in zip(segments, hidden):
            n = x.shape[1]
            layer: ExpertLayer = self.experts[seg.expert].layers[layer_idx]
            seg_cos, seg_sin = cos[:, :, start : start + n], sin[:, :, start : start + n]
            need_query = seg.needs_output or not last
            gate, k, v, q = layer.attention_inputs(x, seg.cond, need_query)
            keys.append(apply_rotary(k, seg_cos, seg_sin))
            values.append(v)
            if need_query:
                queries.append(apply_rotary(q, seg_cos, seg_sin))
                query_rows.append((start, start + n))
            gates.append(gate)
            start += n
        new_k, new_v = torch.cat(keys, dim=2), torch.cat(values, dim=2)  # (B, K, T, Dh)
        if not queries:
            return [None] * len(segments), new_k, new_v
        k, v = new_k, new_v
        if past_kv is not None:
            k, v = torch.cat((past_kv[0], k), dim=2), torch.cat((past_kv[1], v), dim=2)
        rows = tuple(query_rows)
        if rows not in folded_masks:
            mask = attn_mask
            if len(query_rows) != len(segments):
                mask = torch.cat([attn_mask[:, :, a:b] for a, b in query_rows], dim=2)
            folded_masks[rows] = additive_bias(fold_query_groups(mask, self.query_groups), queries[0].dtype)
        q = torch.cat(queries, dim=2)  # (B, H, Tq, Dh)
        attn = rearrange(grouped_query_attention(q, k, v, folded_masks[rows]), "b h t e -> b t (h e)")
        out: list[torch.Tensor | None] = []
        offset = 0
        for seg, x, gate in zip(segments, hidden, gates):
            if not (seg.needs_output or not last):
                out.append(None)
                continue
            n = x.shape[1]
            layer = self.experts[seg.expert].layers[layer_idx]
            out.append(layer.finish(x, attn[:, offset : offset + n], seg.cond, gate))
            offset += n
        return out, new_k, new_v


def _demo() -> None:
    """Block attention over dummy embeddings: 2 image, 2 text (+1 pad), 1 proprio, 2 action tokens."""
    from pg_vla.model.vla.attention_mask import block_attention_mask, positions_from_valid

    torch.manual_seed(0)
    vlm_cfg = GemmaConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=8, vocab_size=16
    )
    act_cfg = GemmaConfig(
        hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=8, vocab_size=1
    )
    model = JointTransformer(
        {"vlm": Expert(vlm_cfg, with_embedding=False), "action": Expert(act_cfg, with_embedding=False)}
    )
    names = ["img", "img", "txt", "txt", "pad", "prop", "act", "act"]
    blocks = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 2]])
    valid = torch.tensor([[True, True, True, True, False, True, True, True]])
    mask = block_attention_mask(blocks, blocks, valid)
    print("block attention mask (rows: queries, columns: keys; 1 = may attend)")
    print("      " + " ".join(f"{n:>4}" for n in names))
    for name, row in zip(names, mask[0, 0].int().tolist()):
        print(f"{name:>5} " + " ".join(f"{v:>4}" for v in row))
    segments = [
        Segment("vlm", torch.randn(1, 5, vlm_cfg.hidden_size)),
        Segment("action", torch.randn(1, 3, act_cfg.hidden_size)),
    ]
    outputs, _ = model(segments, positions_from_valid(valid), mask)
    print("vlm output", tuple(outputs[0].shape), "action output", tuple(outputs[1].shape))


if __name__ == "__main__":
    _demo()
