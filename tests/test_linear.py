"""pg_vla.model.linear: the CPU product in either operand order and precision matches a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pg_vla.model.linear import ALIGNMENT, SMALL_ROWS, Linear, aligned, linear


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ w.double().T
    return out if b is None else out + b.double()


@pytest.mark.parametrize("shape", [(1, 64), (4, 64), (2, 3, 64), (SMALL_ROWS, 64), (SMALL_ROWS + 1, 64), (2, 0, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_float32_values_and_gradients_match_float64(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(96, 64, requires_grad=True)
    b = torch.randn(96, requires_grad=True) if bias else None
    out = linear(x, w, b)
    assert out.shape == (*shape[:-1], 96) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(x, w, b), atol=1e-4, rtol=1e-5)

    grad = torch.randn_like(out)
    out.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    reference(x64, w64, b64).backward(grad.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad.double(), b64.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows", [4, 300])
def test_bfloat16_inference_within_bf16_rounding(rows):
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, 256).bfloat16(), torch.randn(512, 256).bfloat16(), torch.randn(512).bfloat16()
    with torch.no_grad():
        out = linear(x, w, b)
    assert out.dtype == torch.bfloat16
    expected = reference(x, w, b)
    # one bf16 rounding of the float32 result: half an ulp (2^-8 relative) plus float32 accumulation error
    assert ((out.double() - expected).abs() <= expected.abs() * 2**-8 + 1e-3).all()


def test_bfloat16_products_in_a_row_keep_their_own_results():
    """The upcast weights share a reused buffer: earlier outputs must not change with later calls."""
    torch.manual_seed(0)
    x = torch.randn(300, 64).bfloat16()
    weights = [torch.randn(n, 64).bfloat16() for n in (128, 32, 128)]
    with torch.no_grad():
        outs = [linear(x, w) for w in weights]
    for out, w in zip(outs, weights):
        expected = reference(x, w, None)
        assert ((out.double() - expected).abs() <= expected.abs() * 2**-8 + 1e-3).all()


def test_bfloat16_training_keeps_autograd_in_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(300, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(48, 32, dtype=torch.bfloat16, requires_grad=True)
    out = linear(x, w)
    assert torch.equal(out, F.linear(x, w))
    out.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.bfloat16


def test_linear_module_is_an_nn_linear_with_its_keys():
    torch.manual_seed(0)
    layer = Linear(8, 5)
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x).double(), reference(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_aligned_copies_only_misaligned_tensors():
    base = torch.arange(40, dtype=torch.float32)
    assert base.data_ptr() % ALIGNMENT == 0 and aligned(base) is base
    view = base[3:19]  # starts 12 bytes in
    copy = aligned(view)
    assert copy.data_ptr() % ALIGNMENT == 0 and copy.data_ptr() != view.data_ptr()
    assert torch.equal(copy, torch.arange(3, 19, dtype=torch.float32))
