"""The model's one linear product, with the layout and precision this CPU runs fastest.

`nn.Linear` computes x @ W^T. Two CPU cases lose most of their time to how the BLAS runs that product,
not to arithmetic (measured on a 2-core AMD EPYC, torch 2.15 with MKL; `scripts/bench/inference.py`):

- Few rows (a denoising step's action tokens, one generated token, a batch of time embeddings): x @ W^T
  with x of 4 rows and W of 4096 x 1024 runs at ~9 GB/s of weight traffic, a third of the memory
  bandwidth. The same product written as (W @ x^T)^T, which only reorders the operands, runs 2-3x
  faster, the copy of its (N, M) result to (M, N) included. From a hundred rows or so on the two are
  alike, so the reordering is kept to `SMALL_ROWS` rows or fewer.
- bfloat16 on CPUs without native bf16 instructions (no AVX512-BF16 / AMX: oneDNN reports no bf16
  support): bf16 matmuls there run 4-8x slower than float32 ones. In inference (no autograd graph) the
  product is then computed in float32 from the bf16 operands and rounded back to bf16, the same result up
  to the order of the float32 accumulation. With autograd on it stays in bf16: the float32 copies of the
  weights would be kept for the backward pass.

Everywhere else (CUDA, float32 with many rows, CPUs with native bf16) this is `F.linear`. `Linear` is an
`nn.Linear` (same parameters, checkpoint keys, initialisation, and peft/bitsandbytes replace it as one)
whose forward uses `linear`.

Shapes: x (..., K), weight (N, K), bias (N,) -> (..., N).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

SMALL_ROWS = 128  # at most this many rows: (W @ x^T)^T on CPU


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def computed_in(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype `linear` computes an inference product of `dtype` operands in on `device`."""
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return torch.float32
    return dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N), in x's dtype."""
    if x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if not torch.is_grad_enabled() and computed_in(x.device, x.dtype) != x.dtype:
        out = linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(torch.bfloat16)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0 or rows > SMALL_ROWS or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])  # (M, K)
    if bias is None:
        out = torch.mm(weight, flat.T)  # (N, M)
    else:
        out = torch.addmm(bias.unsqueeze(1), weight, flat.T)
    # Contiguous like F.linear's output: strides decide kernels downstream (SDPA's CPU flash kernel).
    return out.T.contiguous().reshape(*x.shape[:-1], weight.shape[0])


ALIGNMENT = 64  # bytes: what torch's CPU allocator gives every tensor


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, copied into fresh memory when its data is not ALIGNMENT-aligned (a tensor read from a
    safetensors file sits wherever the file's header left it). The BLAS's rounding in (W @ x^T) can depend
    on W's alignment, so a model loaded with aligned weights computes exactly what the saved one did."""
    if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
        return tensor.clone()
    return tensor


class Linear(nn.Linear):
    """nn.Linear computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
