"""The model's one linear product, with the layout and precision this CPU runs fastest.

`nn.Linear` computes x @ W^T. Two CPU cases lose most of their time to how the BLAS runs that product,
not to arithmetic (measured on a 2-core AMD EPYC, torch 2.15 with MKL; `scripts/bench/inference.py`):

- Few rows (a denoising step's action tokens, one generated token, a batch of time embeddings): x @ W^T
  with x of 4 rows and W of 4096 x 1024 runs at ~9 GB/s of weight traffic, a third of the memory
  bandwidth. The same product written as (W @ x^T)^T, which only reorders the operands, runs 2-3x
  faster, the copy of its (N, M) result to (M, N) included. From a hundred rows or so on the two are
  alike, so the reordering is kept to `SMALL_ROWS` rows or fewer.
- bfloat16 on CPUs without native bf16 instructions (no AVX512-BF16 / AMX: oneDNN reports no bf16
  support): bf16 matmuls of many rows there run 4-8x slower than float32 ones. In inference (no autograd
  graph) a product of more than `SMALL_ROWS` rows is then computed in float32 from the bf16 operands
  (the weight upcast into a reused per-thread buffer) and rounded back to bf16, the same result up to
  the order of the float32 accumulation. Few rows stay in bf16: they are bound by reading the weight,
  which the upcast would only lengthen. With autograd on it all stays in bf16: the float32 copies of
  the weights would be kept for the backward pass.

Everywhere else (CUDA, float32 with many rows, CPUs with native bf16) this is `F.linear`. `Linear` is an
`nn.Linear` (same parameters, checkpoint keys, initialisation, and peft/bitsandbytes replace it as one)
whose forward uses `linear`.

Shapes: x (..., K), weight (N, K), bias (N,) -> (..., N).
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

SMALL_ROWS = 128  # at most this many rows: (W @ x^T)^T on CPU


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def computed_in(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype `linear` computes an inference product of `dtype` operands and more than `SMALL_ROWS` rows
    in, on `device`."""
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return torch.float32
    return dtype


_WORKSPACE = threading.local()  # per thread: a float32 buffer the weights of bf16 products are upcast into
WORKSPACE_LIMIT = 64 * 2**20  # elements (256 MiB); a larger weight is upcast into fresh memory


def _float32_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight as float32, in a buffer reused from call to call: writing into fresh memory costs a page fault
    per page (a 16384 x 2048 bf16 weight took 57 ms to upcast into new memory, 10 ms into reused)."""
    n = weight.numel()
    if n > WORKSPACE_LIMIT:
        return weight.float()
    buffer = getattr(_WORKSPACE, "buffer", None)
    if buffer is None or buffer.numel() < n:
        buffer = _WORKSPACE.buffer = torch.empty(n, dtype=torch.float32, device=weight.device)
    return buffer[:n].view(weight.shape).copy_(weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N), in x's dtype."""
    if x.device.type != "cpu":
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0 or rows > SMALL_ROWS or x.dtype != weight.dtype:
        if rows and not torch.is_grad_enabled() and computed_in(x.device, x.dtype) != x.dtype:
            out = F.linear(x.float(), _float32_weight(weight), None if bias is None else bias.float())
            return out.to(x.dtype)
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
