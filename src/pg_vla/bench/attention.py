"""Which scaled_dot_product_attention backends accept the model's attention calls, and how fast they are.

Shapes: q (B, H, Tq, Dh), k/v (B, K, Tk, Dh) with the VLM's heads H, KV heads K and head dim Dh, a boolean
block mask (B, 1, Tq, Tk); each backend (flash, efficient, cudnn, math) is forced alone with sdpa_kernel and
timed over 5 calls (median, ms) or reported with the reason it refuses.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from pg_vla.bench.harness import elapsed_ms, free_memory, synchronize
from pg_vla.model.vla.attention_mask import ACTION_BLOCK, IMAGE_TEXT_BLOCK, PROPRIO_BLOCK, block_attention_mask
from pg_vla.model.vla.config import PiZeroConfig


def attention_calls(cfg: PiZeroConfig, batch: int) -> dict[str, tuple[int, int, bool]]:
    """The model's attention calls: name -> (query tokens, key tokens, with backward)."""
    prefix = cfg.prefix_len + cfg.cond_steps
    return {
        "prefix": (prefix, prefix, False),  # encode_prefix (KV cache)
        "denoise": (cfg.horizon_steps, prefix + cfg.horizon_steps, False),  # one denoising step
        "train": (cfg.seq_len, cfg.seq_len, True),
    }  # training / uncached sampling (all tokens)


def sdpa_backends(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Which scaled_dot_product_attention backends accept the model's attention calls (same q/k/v
    shapes, dtype, GQA and boolean block mask), each forced alone with sdpa_kernel; CUDA only."""
    if device.type != "cuda":
        return {"skipped": "CUDA only (torch.nn.attention.sdpa_kernel backends)"}
    return sdpa_backend_table(cfg, batch, dtype, device)


def _attention_functions(gqa: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """q (B, H, Tq, Dh), k/v (B, K, Tk, Dh), bool mask -> (B, H, Tq, Dh): the model's attention
    (query heads of a KV group folded into the query axis) and, for comparison, the plain SDPA call
    with enable_gqa that it replaces."""
    import torch.nn.functional as F

    from pg_vla.model.vla.joint_model import fold_query_groups, grouped_query_attention

    def model_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return grouped_query_attention(q, k, v, fold_query_groups(mask, q.shape[1] // k.shape[1]))

    def sdpa_enable_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    return {"grouped_query_attention (model)": model_attention, "sdpa_enable_gqa": sdpa_enable_gqa}


def sdpa_backend_table(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """sdpa_backends' work on any device (the CPU only has flash and math kernels)."""
    from torch.nn.attention import SDPBackend

    vlm = cfg.vlm
    gqa = vlm.num_heads != vlm.num_kv_heads
    functions = _attention_functions(gqa)
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    lengths = torch.full((batch,), cfg.max_text_tokens)
    lengths[batch // 2 :] = max(1, cfg.max_text_tokens // 2)  # some text padding, as real batches have
    text_valid = torch.arange(cfg.max_text_tokens).expand(batch, -1) < lengths[:, None]
    blocks_all = torch.cat(
        [
            torch.full((cfg.prefix_len,), IMAGE_TEXT_BLOCK),
            torch.full((cfg.cond_steps,), PROPRIO_BLOCK),
            torch.full((cfg.horizon_steps,), ACTION_BLOCK),
        ]
    ).expand(batch, -1)
    valid_all = torch.cat(
        (
            torch.ones(batch, cfg.num_image_tokens, dtype=torch.bool),
            text_valid,
            torch.ones(batch, cfg.cond_steps + cfg.horizon_steps, dtype=torch.bool),
        ),
        dim=1,
    )
    out: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch,
        "num_heads": vlm.num_heads,
        "num_kv_heads": vlm.num_kv_heads,
        "head_dim": vlm.head_dim,
    }
    generator = torch.Generator(device=device).manual_seed(0)
    for name, (q_len, k_len, backward) in attention_calls(cfg, batch).items():
        keys = slice(0, k_len)
        queries = slice(k_len - q_len, k_len)  # prefix/train: all; denoise: the trailing action tokens
        mask = block_attention_mask(blocks_all[:, queries], blocks_all[:, keys], valid_all[:, keys]).to(device)

        def tensor(heads: int, length: int, backward: bool = backward) -> torch.Tensor:
            return torch.randn(
                batch,
                heads,
                length,
                vlm.head_dim,
                device=device,
                dtype=dtype,
                generator=generator,
                requires_grad=backward,
            )

        q, k, v = tensor(vlm.num_heads, q_len), tensor(vlm.num_kv_heads, k_len), tensor(vlm.num_kv_heads, k_len)

        row: dict[str, Any] = {
            "query_tokens": q_len,
            "key_tokens": k_len,
            "backward": backward,
            "mask": f"bool {tuple(mask.shape)}",
        }
        for function_name, attend in functions.items():
            row[function_name] = _backend_row(attend, q, k, v, mask, backward, backends, device)
        out[name] = row
    free_memory(device)
    return out


def _backend_row(
    attend: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    backward: bool,
    backends: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """backend name -> {"accepted": True, "median_ms"} or {"accepted": False, "error", "reasons"}."""
    import warnings

    from torch.nn.attention import sdpa_kernel

    def call() -> None:
        o = attend(q, k, v, mask)
        if backward:
            o.sum().backward()

    row: dict[str, Any] = {}
    for backend_name, backend in backends.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel(backend):
                    call()
                    synchronize(device)
                    timings = [elapsed_ms(call, device) for _ in range(5)]
                row[backend_name] = {"accepted": True, "median_ms": round(float(np.median(timings)), 4)}
            except Exception as error:  # noqa: BLE001 - "not accepted" is the answer
                reasons = [str(w.message).strip().splitlines()[0] for w in caught][:3]
                row[backend_name] = {
                    "accepted": False,
                    "error": (str(error).strip().splitlines() or [""])[0][:300],
                    "reasons": reasons,
                }
        for t in (q, k, v):
            t.grad = None
    return row
