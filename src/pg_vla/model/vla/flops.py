"""Analytic FLOP counts of the pi0 model (flow head), from the configuration's dimensions alone.

Every matrix multiplication counts 2 * m * n * k FLOPs (a multiply and an add per term); the patch
embedding convolution counts as the matmul it is (patches x 3*p*p x hidden). Biases, norms, rotary
embeddings, softmax, activations, the sinusoidal time embedding, residual adds, embedding lookups,
the loss and the optimizer step are elementwise or memory-bound and are ignored; so are the attention
mask and padding (the model computes padded text tokens and masked image views like real ones, and so
does this count).

What is counted mirrors what the code computes (joint_model.py, pizero.py, siglip.py, modules.py):

    SigLIP      patch embedding; per layer Q/K/V/out projections, scores Q K^T and A V over the
                patches of each image, MLP; then the projector to the VLM width
    VLM         Gemma layers over the prefix (image + text tokens); in the last layer the prefix
                computes only keys and values (`needs_output=False`: its queries, output projection
                and MLP feed nothing)
    action      Gemma layers of the action expert over proprio + action tokens (or only the proprio
                tokens when encoding the prefix, only the action tokens in a denoising step), plus
                adaLN modulations when time conditioning is adaLN
    attention   ONE attention over all tokens of a call under the block mask: every query row is
                computed against every key (T_q x T_k x heads, masking does not skip work; grouped
                KV heads change memory traffic, not FLOPs); in the last
                layer only rows of segments that produce outputs are queries; the prefix encoding's
                last layer has no queries at all (keys/values only)
    action io   proprio encoder, action/time MLP (or adaLN time MLP), action decoder

Training (forward + backward): a matmul with a trainable weight costs 2x its forward in backward
(input gradient + weight gradient), 1x when only one of the two is needed: a frozen weight whose
input still needs a gradient, or a trainable weight applied to an input that needs none (pixels,
proprio, noisy actions, the time embedding). Nothing below a frozen SigLIP tower (`freeze_vision`)
needs gradients, so a frozen tower costs no backward at all (its projector only a weight gradient).
The frozen parameters of `PiZero.frozen_parameter_names()` (token embeddings, the final VLM norm,
the last VLM layer's unread parts) do no matmul in training, so they cost nothing either. With
adaLN time conditioning the proprio tokens are a separate segment whose final outputs nothing reads:
their last-layer output projection and MLP run in forward but get no backward. Attention
scores (activation x activation) cost 2x in backward. `fused_attention_backward=True` counts 2.5x
instead: flash / memory-efficient backward kernels recompute Q K^T, as torch's FlopCounterMode counts
them. With gradient checkpointing, the checkpointed blocks (joint layers, SigLIP encoder layers) run
their forward again in backward ("recompute"); PyTorch's non-reentrant checkpointing stops the
replay once every tensor backward needs exists again, which skips a block's trailing matmul whose
output no backward formula reads (the last MLP down-projection of a joint layer; SigLIP's fc2).
Model FLOPs (for MFU) exclude the recompute; the total ("hardware" FLOPs) includes it.

Usage:
    from pg_vla.model.vla.flops import forward_flops, train_step_flops, sampling_flops, flops_breakdown
    train_step_flops(PiZeroConfig.preset("pi0"))                  # per sample
    flops_breakdown(cfg, "sample_cached", batch=8, num_steps=10)  # {"total": ..., "by_component": {...}}
    uv run python -m pg_vla.model.vla.flops --config pi0           # prints the breakdowns as JSON
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pg_vla.model.vla.config import GemmaConfig, PiZeroConfig

COMPONENTS = ("vision", "vision_attention", "projector", "vlm", "action_expert", "joint_attention", "action_io")
KINDS = ("forward", "train_step", "sample_cached", "sample_uncached")


@dataclass(frozen=True)
class _Matmul:
    component: str  # one of COMPONENTS
    flops: int  # forward FLOPs
    backward: float  # backward FLOPs as a multiple of `flops` in a train step
    recompute: bool = False  # replayed in backward under gradient checkpointing
    attention: bool = False  # activation x activation (Q K^T and A V)


def _linear(
    component: str, rows: int, d_in: int, d_out: int, *, trainable: bool, input_grad: bool, recompute: bool = False
) -> _Matmul:
    """rows x d_in times d_in x d_out."""
    return _Matmul(component, 2 * rows * d_in * d_out, int(trainable) + int(input_grad), recompute)


def _scores(
    component: str,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    head_dim: int,
    *,
    grad: bool,
    recompute: bool = False,
) -> _Matmul:
    """Q K^T (q_len x head_dim x k_len) and A V (q_len x k_len x head_dim), per batch element and head."""
    return _Matmul(component, 2 * 2 * batch * heads * q_len * k_len * head_dim, 2.0 * grad, recompute, attention=True)


# ---- parts --------------------------------------------------------------------------------------------
def _vision(cfg: PiZeroConfig, batch: int) -> list[_Matmul]:
    """SigLIP over batch * num_views images (every camera at every history frame), and the projector."""
    vis = cfg.vision
    images, p, d = batch * cfg.num_views, vis.num_patches, vis.hidden_size
    rows = images * p
    train = not cfg.freeze_vision  # the tower's weights train; then everything above the pixels needs gradients
    ops = [_linear("vision", rows, 3 * vis.patch_size**2, d, trainable=train, input_grad=False)]
    for _ in range(vis.num_layers):  # a checkpointed block each (replayed only when it has a backward)
        ops += [
            *(_linear("vision", rows, d, d, trainable=train, input_grad=train, recompute=train) for _ in range(3)),
            _scores("vision_attention", images, vis.num_heads, p, p, d // vis.num_heads, grad=train, recompute=train),
            _linear("vision", rows, d, d, trainable=train, input_grad=train, recompute=train),  # out_proj
            _linear("vision", rows, d, vis.intermediate_size, trainable=train, input_grad=train, recompute=train),
            # fc2: the block's last matmul; checkpoint's early stop does not replay it
            _linear("vision", rows, vis.intermediate_size, d, trainable=train, input_grad=train),
        ]
    ops.append(_linear("projector", rows, d, cfg.vlm.hidden_size, trainable=True, input_grad=train))
    return ops


@dataclass(frozen=True)
class _Segment:
    expert: str  # "vlm" or "action"
    tokens: int  # per sample
    needs_output: bool = True
    cond: bool = False  # carries adaLN conditioning
    read: bool = True  # the loss reads its outputs (else its last-layer outputs get no backward)


def _joint(cfg: PiZeroConfig, batch: int, segments: list[_Segment], past: int, grad: bool) -> list[_Matmul]:
    """The joint transformer over `segments` (one call), with `past` cached keys per sample.

    `grad`: a training pass. Every hidden state in the joint model then needs a gradient (the
    projector and the proprio/action encoders below it train), and each layer is a checkpointed block.
    """
    vlm, act = cfg.vlm, cfg.action_gemma()
    experts: dict[str, GemmaConfig] = {"vlm": vlm, "action": act}
    names = {"vlm": "vlm", "action": "action_expert"}
    heads, kv_heads, head_dim = vlm.num_heads, vlm.num_kv_heads, vlm.head_dim
    adaln = cfg.time_conditioning != "mlp"
    gated = cfg.time_conditioning == "adaln_zero"
    mod_out = act.hidden_size * (3 if gated else 2)
    total = sum(s.tokens for s in segments)
    ops: list[_Matmul] = []
    for layer in range(vlm.num_layers):
        last = layer == vlm.num_layers - 1
        # frozen_parameter_names: the last VLM layer's q_proj, o_proj and MLP (they only run for a VLM
        # segment that needs outputs, which training never has); its k_proj and v_proj train.
        trains = {"vlm": not last, "action": True}
        layer_ops: list[_Matmul] = []

        def linear(
            seg: _Segment,
            rows: int,
            d_in: int,
            d_out: int,
            trainable: bool = True,
            backward: bool = True,
            layer_ops: list[_Matmul] = layer_ops,
        ) -> None:
            layer_ops.append(
                _linear(
                    names[seg.expert],
                    rows,
                    d_in,
                    d_out,
                    trainable=trainable and backward,
                    input_grad=grad and backward,
                    recompute=grad,
                )
            )

        q_tokens, trailing_gate = 0, False
        for seg in segments:
            e, rows = experts[seg.expert], batch * seg.tokens
            if seg.cond and adaln:  # input_layernorm's modulation, once per sample
                linear(seg, batch, act.hidden_size, mod_out)
            linear(seg, rows, e.hidden_size, kv_heads * head_dim)  # k_proj
            linear(seg, rows, e.hidden_size, kv_heads * head_dim)  # v_proj
            if seg.needs_output or not last:
                linear(seg, rows, e.hidden_size, heads * head_dim, trains[seg.expert])  # q_proj
                q_tokens += seg.tokens
        if q_tokens:
            layer_ops.append(
                _scores("joint_attention", batch, heads, q_tokens, past + total, head_dim, grad=grad, recompute=grad)
            )
        for seg in segments:
            if not (seg.needs_output or not last):
                continue
            e, rows, train = experts[seg.expert], batch * seg.tokens, trains[seg.expert]
            # A segment whose final outputs nothing reads (adaLN's separate proprio segment) computes
            # its last-layer outputs in forward, but no gradient reaches them.
            bwd = seg.read or not last
            linear(seg, rows, heads * head_dim, e.hidden_size, train, bwd)  # o_proj
            if seg.cond and adaln:  # post_attention_layernorm's modulation
                linear(seg, batch, act.hidden_size, mod_out, True, bwd)
            linear(seg, rows, e.hidden_size, e.intermediate_size, train, bwd)  # gate_proj
            linear(seg, rows, e.hidden_size, e.intermediate_size, train, bwd)  # up_proj
            linear(seg, rows, e.intermediate_size, e.hidden_size, train, bwd)  # down_proj
            trailing_gate = seg.cond and gated
        # Checkpoint's early stop does not replay the layer's trailing down_proj: no backward formula
        # reads its output, unless an adaLN-Zero gate multiplies (and so saves) it.
        if layer_ops and layer_ops[-1].recompute and not trailing_gate:
            op = layer_ops[-1]
            layer_ops[-1] = _Matmul(op.component, op.flops, op.backward, False, op.attention)
        ops += layer_ops
    for seg in segments:  # final norms: adaLN modulation of conditioned segments that produce outputs
        if seg.needs_output and seg.cond and adaln:
            ops.append(
                _linear("action_expert", batch, act.hidden_size, 2 * act.hidden_size, trainable=True, input_grad=grad)
            )
    return ops


def _proprio_encoder(cfg: PiZeroConfig, batch: int) -> _Matmul:
    return _linear(
        "action_io",
        batch * cfg.cond_steps,
        cfg.proprio_dim,
        cfg.action_expert.hidden_size,
        trainable=True,
        input_grad=False,
    )


def _action_encoder(cfg: PiZeroConfig, batch: int) -> list[_Matmul]:
    width, rows = cfg.action_expert.hidden_size, batch * cfg.horizon_steps
    ops = [_linear("action_io", rows, cfg.action_dim, width, trainable=True, input_grad=False)]  # action_proj
    if cfg.time_conditioning == "mlp":  # W2 on [W1 a, time] per token, then W3
        ops += [
            _linear("action_io", rows, 2 * width, width, trainable=True, input_grad=True),
            _linear("action_io", rows, width, width, trainable=True, input_grad=True),
        ]
    else:  # adaLN: the time MLP runs once per sample, on the sinusoid (no gradient below it)
        ops += [
            _linear("action_io", batch, width, width, trainable=True, input_grad=False),
            _linear("action_io", batch, width, width, trainable=True, input_grad=True),
        ]
    return ops


def _action_decoder(cfg: PiZeroConfig, batch: int) -> _Matmul:
    return _linear(
        "action_io",
        batch * cfg.horizon_steps,
        cfg.action_expert.hidden_size,
        cfg.action_dim,
        trainable=True,
        input_grad=True,
    )


def _action_segments(cfg: PiZeroConfig) -> list[_Segment]:
    if cfg.time_conditioning == "mlp":  # proprio and actions go through the expert together
        return [_Segment("action", cfg.cond_steps + cfg.horizon_steps)]
    # adaLN: proprio tokens are their own (unconditioned) segment; only the action tokens' outputs are read
    return [_Segment("action", cfg.cond_steps, read=False), _Segment("action", cfg.horizon_steps, cond=True)]


# ---- calls ------------------------------------------------------------------------------------------------
def _check(cfg: PiZeroConfig) -> None:
    if cfg.action_head != "flow":
        raise ValueError(f"FLOPs are counted for action_head='flow' only, got {cfg.action_head!r}")


def _predict_velocity(cfg: PiZeroConfig, batch: int, grad: bool) -> list[_Matmul]:
    """One pass over all tokens: training's forward."""
    return [*_vision(cfg, batch), *_velocity_from_prefix(cfg, batch, grad)]


def _velocity_from_prefix(cfg: PiZeroConfig, batch: int, grad: bool) -> list[_Matmul]:
    """The pass after the vision tower: each uncached sampling step (the images are embedded once)."""
    segments = [_Segment("vlm", cfg.prefix_len, needs_output=False), *_action_segments(cfg)]
    return [
        _proprio_encoder(cfg, batch),
        *_action_encoder(cfg, batch),
        *_joint(cfg, batch, segments, 0, grad),
        _action_decoder(cfg, batch),
    ]


def _encode_prefix(cfg: PiZeroConfig, batch: int) -> list[_Matmul]:
    segments = [
        _Segment("vlm", cfg.prefix_len, needs_output=False),
        _Segment("action", cfg.cond_steps, needs_output=False),
    ]
    return [*_vision(cfg, batch), _proprio_encoder(cfg, batch), *_joint(cfg, batch, segments, 0, False)]


def _denoise_step(cfg: PiZeroConfig, batch: int) -> list[_Matmul]:
    segments = [_Segment("action", cfg.horizon_steps, cond=cfg.time_conditioning != "mlp")]
    return [
        *_action_encoder(cfg, batch),
        *_joint(cfg, batch, segments, cfg.prefix_len + cfg.cond_steps, False),
        _action_decoder(cfg, batch),
    ]


def _by_component(ops: list[_Matmul], factor=lambda op: 1.0) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for op in ops:
        out[op.component] += int(round(op.flops * factor(op)))
    return out


def _sum(parts: dict[str, int]) -> int:
    return sum(parts.values())


def flops_breakdown(
    cfg: PiZeroConfig,
    kind: str,
    batch: int = 1,
    num_steps: int | None = None,
    gradient_checkpointing: bool = False,
    fused_attention_backward: bool = False,
) -> dict[str, Any]:
    """FLOPs of one call, with a per-component breakdown.

    kind: "forward" (the training loss's forward pass), "train_step" (forward + backward, the
    frozen parameters frozen), "sample_cached" / "sample_uncached" (`sample_actions` with
    `num_steps` flow steps, default the config's). Returns {"kind", "batch", "total",
    "by_component": {component: FLOPs}} plus, for train_step, "forward", "backward", "recompute"
    and "model_flops" (forward + backward, without recompute: what MFU divides), and for sampling
    "prefix" (cached: the prefix pass; uncached: the vision tower, run once) and "per_step".
    """
    _check(cfg)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    out: dict[str, Any] = {"kind": kind, "batch": batch}
    if kind == "forward":
        parts = _by_component(_predict_velocity(cfg, batch, grad=False))
    elif kind == "train_step":
        ops = _predict_velocity(cfg, batch, grad=True)
        attn_factor = 2.5 if fused_attention_backward else 2.0
        fwd = _by_component(ops)
        bwd = _by_component(ops, lambda op: (attn_factor if op.backward else 0.0) if op.attention else op.backward)
        rec = _by_component(ops, lambda op: float(op.recompute and gradient_checkpointing))
        parts = {c: fwd[c] + bwd[c] + rec[c] for c in COMPONENTS}
        model_bwd = _by_component(ops, lambda op: op.backward)  # 2x attention, no recompute
        out.update(
            forward=_sum(fwd),
            backward=_sum(bwd),
            recompute=_sum(rec),
            model_flops=_sum(fwd) + _sum(model_bwd),
            gradient_checkpointing=gradient_checkpointing,
            fused_attention_backward=fused_attention_backward,
        )
    elif kind in ("sample_cached", "sample_uncached"):
        steps = num_steps or cfg.num_inference_steps
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        out["num_steps"] = steps
        if kind == "sample_uncached":
            vision = _by_component(_vision(cfg, batch))
            step = _by_component(_velocity_from_prefix(cfg, batch, grad=False))
            parts = {c: vision[c] + steps * step[c] for c in COMPONENTS}
            out.update(prefix=_sum(vision), per_step=_sum(step))
        else:
            prefix, step = _by_component(_encode_prefix(cfg, batch)), _by_component(_denoise_step(cfg, batch))
            parts = {c: prefix[c] + steps * step[c] for c in COMPONENTS}
            out.update(prefix=_sum(prefix), per_step=_sum(step))
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    out["total"] = _sum(parts)
    out["by_component"] = parts
    return out


def forward_flops(cfg: PiZeroConfig, batch: int = 1) -> int:
    """The training forward pass (flow-matching loss): vision, prefix and action tokens in one pass."""
    return flops_breakdown(cfg, "forward", batch)["total"]


def train_step_flops(
    cfg: PiZeroConfig,
    batch: int = 1,
    gradient_checkpointing: bool = False,
    fused_attention_backward: bool = False,
    include_recompute: bool = False,
) -> int:
    """Forward + backward of one train step with the frozen parameters frozen.

    Model FLOPs (what MFU uses) by default; `include_recompute` adds gradient checkpointing's replayed
    forward, `fused_attention_backward` counts fused attention backward kernels' Q K^T recompute.
    """
    out = flops_breakdown(
        cfg,
        "train_step",
        batch,
        gradient_checkpointing=gradient_checkpointing,
        fused_attention_backward=fused_attention_backward,
    )
    if include_recompute:
        return out["total"]
    return out["total"] - out["recompute"]


def sampling_flops(cfg: PiZeroConfig, num_steps: int | None = None, use_cache: bool = True, batch: int = 1) -> int:
    """`sample_actions`: prefix once + num_steps denoising steps (cached), or num_steps full passes."""
    return flops_breakdown(cfg, "sample_cached" if use_cache else "sample_uncached", batch, num_steps)["total"]


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Analytic FLOPs of the pi0 model, per component, as JSON.")
    parser.add_argument("--config", default="pi0", help="model preset (pi0, small, tiny)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num_steps", type=int, default=None)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    args = parser.parse_args(argv)
    cfg = PiZeroConfig.preset(args.config)
    print(
        json.dumps(
            {
                kind: flops_breakdown(cfg, kind, args.batch, args.num_steps, args.gradient_checkpointing)
                for kind in KINDS
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
