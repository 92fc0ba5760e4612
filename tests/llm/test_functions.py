"""The hand-written backward passes equal autograd on the elementary operations."""

import pytest
import torch
from torch.autograd import gradcheck

from mlscratch.llm import gpt
from mlscratch.llm.functions import (
    attention,
    cross_entropy,
    gelu,
    gelu_slope,
    layer_norm,
    rms_norm,
    swiglu,
)


def basic_layer_norm(x, weight, bias, eps):
    """The GPT's Norm (layernorm), written with elementary operations."""
    cfg = gpt.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=x.shape[-1])
    cfg.norm_eps, cfg.bias = eps, bias is not None
    norm = gpt.Norm(cfg).to(x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        if bias is not None:
            norm.bias.copy_(bias)
    return norm, norm(x)


def grads(out, inputs):
    return torch.autograd.grad(out, inputs, torch.ones_like(out) if out.ndim else None)


def assert_close(a, b, rtol):
    assert (a - b).abs().max() <= rtol * b.abs().max().clamp_min(1e-30), (a - b).abs().max()


@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_gelu_gradcheck_and_equal_to_autograd(form):
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert gradcheck(lambda x: gelu(x, form), (x64,))
    x = (4 * torch.randn(64, 96, generator=g)).requires_grad_()
    dy = torch.randn(64, 96, generator=g)
    ours, basic = gelu(x, form), gpt.gelu(x, form)
    assert_close(ours, basic, 1e-6)
    (d_ours,) = torch.autograd.grad(ours, x, dy)
    (d_basic,) = torch.autograd.grad(basic, x, dy)
    assert_close(d_ours, d_basic, 1e-5)


@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_gelu_slope_matches_float64_autograd_everywhere(form):
    x = torch.linspace(-12, 12, 4001, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(gpt.gelu(x, form).sum(), x)
    assert torch.allclose(gelu_slope(x.detach(), form), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_gradcheck_and_equal_to_autograd(bias):
    g = torch.Generator().manual_seed(1)
    d = torch.float64
    x64 = (3 * torch.randn(2, 3, 8, dtype=d, generator=g) + 1).requires_grad_()
    w64 = torch.randn(8, dtype=d, generator=g, requires_grad=True)
    b64 = torch.randn(8, dtype=d, generator=g, requires_grad=True) if bias else None
    args = (x64, w64, b64) if bias else (x64, w64)
    assert gradcheck(lambda *a: layer_norm(*a, eps=1e-5), args)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = (3 * torch.randn(4, 7, 32, generator=g) + 1).to(dtype).requires_grad_()
        w = torch.randn(32, generator=g).to(dtype).requires_grad_()
        b = torch.randn(32, generator=g).to(dtype).requires_grad_() if bias else None
        dy = torch.randn(4, 7, 32, generator=g).to(dtype)
        norm, basic = basic_layer_norm(x, w, b, 1e-5)
        ours = layer_norm(x, w, b, 1e-5)
        assert_close(ours, basic, rtol)
        params = [norm.weight] + ([norm.bias] if bias else [])
        expected = torch.autograd.grad(basic, [x, *params], dy)
        got = torch.autograd.grad(ours, [x, w] + ([b] if bias else []), dy)
        for a, e in zip(got, expected, strict=True):
            assert_close(a, e, rtol)


def test_cross_entropy_gradcheck_and_equal_to_autograd():
    g = torch.Generator().manual_seed(2)
    z64 = torch.randn(9, 11, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 11, (9,), generator=g)
    t[[1, 5]] = -1
    assert gradcheck(lambda z: cross_entropy(z, t), (z64,))
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        z = (5 * torch.randn(50, 65, generator=g)).to(dtype).requires_grad_()
        t = torch.randint(0, 65, (50,), generator=g)
        t[:7] = -1
        ours, basic = cross_entropy(z, t), gpt.cross_entropy(z, t)
        assert_close(ours, basic, rtol)
        assert_close(ours, torch.nn.functional.cross_entropy(z, t, ignore_index=-1), rtol)
        (d_ours,) = torch.autograd.grad(3 * ours, z)
        (d_basic,) = torch.autograd.grad(3 * basic, z)
        assert_close(d_ours, d_basic, rtol)
        assert d_ours[:7].abs().max() == 0  # ignored positions get no gradient


def grads_of(out, inputs, dy):
    return torch.autograd.grad(out, inputs, dy)


def test_swiglu_gradcheck_and_equal_to_autograd():
    g = torch.Generator().manual_seed(3)
    a64, b64 = (torch.randn(3, 7, dtype=torch.float64, generator=g) for _ in range(2))
    assert gradcheck(swiglu, (a64.requires_grad_(), b64.requires_grad_()))
    a, b = ((4 * torch.randn(64, 96, generator=g)).requires_grad_() for _ in range(2))
    dy = torch.randn(64, 96, generator=g)
    ours, basic = swiglu(a, b), gpt.swiglu(a, b)
    assert_close(ours, basic, 1e-6)
    got, expected = grads_of(ours, (a, b), dy), grads_of(basic, (a, b), dy)
    for d_ours, d_basic in zip(got, expected, strict=True):
        assert_close(d_ours, d_basic, 1e-5)


def test_rms_norm_gradcheck_and_equal_to_autograd():
    g = torch.Generator().manual_seed(4)
    x64 = (3 * torch.randn(2, 3, 8, dtype=torch.float64, generator=g) + 1).requires_grad_()
    w64 = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x64, w64))
    cfg = gpt.GPTConfig.llama(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=32)
    norm = gpt.Norm(cfg)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32, generator=g))
    x = (3 * torch.randn(4, 7, 32, generator=g) + 1).requires_grad_()
    dy = torch.randn(4, 7, 32, generator=g)
    basic, ours = norm(x), rms_norm(x, norm.weight, cfg.norm_eps)
    assert_close(ours, basic, 1e-6)
    got = grads_of(ours, (x, norm.weight), dy)
    expected = grads_of(basic, (x, norm.weight), dy)
    for a, e in zip(got, expected, strict=True):
        assert_close(a, e, 1e-5)


def test_attention_gradcheck_with_causal_and_document_masks():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64, generator=g) for _ in range(3))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    doc = gpt.document_mask(torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]]))
    for mask in (causal, doc):
        args = tuple(t.clone().requires_grad_() for t in (q, k, v))
        assert gradcheck(lambda q, k, v, m=mask: attention(q, k, v, m), args)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_attention_equal_to_the_gpts_with_dropout(p):
    """Same values and gradients as gpt.causal_attention on elementary operations; with
    dropout both draw the keep-mask from the same random numbers."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(3, 4, 16, 8, generator=g).requires_grad_()
    k, v = (torch.randn(3, 2, 20, 8, generator=g).requires_grad_() for _ in range(2))
    dy = torch.randn(3, 4, 16, 8, generator=g)
    results = []
    for hand in (False, True):
        torch.manual_seed(7)  # the dropout draws
        y = gpt.causal_attention(q, k, v, p, hand_backward=hand)  # grouped, cache-shifted
        results.append((y, grads_of(y, (q, k, v), dy)))
    (basic, g_basic), (ours, g_ours) = results
    assert_close(ours, basic, 1e-5)
    for a, e in zip(g_ours, g_basic, strict=True):
        assert_close(a, e, 1e-5)


def test_functions_save_less_than_autograd():
    """Only what the backward needs is saved: x and the step for the GELU, a and b for
    SwiGLU, x-hat, 1/s and the gain for the norms, q, k, v, weights, output for attention."""
    saved = []
    x = torch.randn(16, 64, requires_grad=True)
    w = torch.ones(64, requires_grad=True)
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        for form in ("exact", "tanh"):
            gelu(x, form)  # x and the step, so the backward never calls erf or tanh
            assert saved == [x.numel(), x.numel()]
            saved.clear()
        swiglu(x, x)
        assert saved == [x.numel(), x.numel()]
        saved.clear()
        layer_norm(x, w)
        assert sorted(saved) == [16, 64, x.numel()]
        saved.clear()
        rms_norm(x, w)
        assert sorted(saved) == [16, 64, x.numel()]
        saved.clear()
        attention(q, q, q, torch.ones(16, 16, dtype=torch.bool).tril())
        assert saved == [q.numel()] * 3 + [2 * 16 * 16, q.numel()]


def test_attention_under_bfloat16_autocast_matches_the_gpts():
    """The backward pass replays the forward's autocast: products in bfloat16, gradients
    of float32 inputs (rotated queries and keys stay float32) close to autograd's."""
    g = torch.Generator().manual_seed(8)
    q, k = (torch.randn(2, 2, 12, 8, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(2, 2, 12, 8, generator=g).bfloat16().requires_grad_()
    dy = torch.randn(2, 2, 12, 8, generator=g)
    results = []
    for hand in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = gpt.causal_attention(q, k, v, 0.0, hand_backward=hand)
        assert y.dtype == torch.bfloat16
        results.append((y.float(), grads_of(y, (q, k, v), dy.bfloat16())))
    (basic, g_basic), (ours, g_ours) = results
    assert_close(ours, basic, 2e-2)
    for a, e in zip(g_ours, g_basic, strict=True):
        assert a.dtype == e.dtype
        assert_close(a.float(), e.float(), 5e-2)
