"""Chapter 7's training pieces against PyTorch: label smoothing, Adam, clipping; batching."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.gradcheck import numerical_gradient, relative_error
from mlscratch.numpy_transformer.layers import Linear, Module
from mlscratch.numpy_transformer.training import (
    Adam,
    LabelSmoothingLoss,
    clip_grad_norm,
    make_batches,
    noam_lr,
    pad,
)


def logits_and_targets(seed, shape=(3, 5), V=7, pad_id=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((*shape, V)) * 3
    targets = rng.integers(0, V, shape)
    targets[0, -2:] = pad_id  # some padding
    return logits, targets


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    smoothing=st.sampled_from([0.0, 0.1, 0.3]),
    ignore=st.sampled_from([None, 0]),
)
def test_label_smoothing_equals_torch_cross_entropy(seed, smoothing, ignore):
    logits, targets = logits_and_targets(seed)
    loss_fn = LabelSmoothingLoss(smoothing, ignore_index=ignore)
    ours = loss_fn.forward(logits, targets)
    dlogits = loss_fn.backward()
    lt = torch.from_numpy(logits).requires_grad_()
    ref = torch.nn.functional.cross_entropy(
        lt.reshape(-1, logits.shape[-1]),
        torch.from_numpy(targets).reshape(-1),
        label_smoothing=smoothing,
        ignore_index=-100 if ignore is None else ignore,
    )
    ref.backward()
    assert ours == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_label_smoothing_gradient_matches_finite_differences_and_ignores_padding():
    logits, targets = logits_and_targets(1)
    loss_fn = LabelSmoothingLoss(0.1, ignore_index=0)
    loss_fn.forward(logits, targets)
    analytic = loss_fn.backward()
    numeric = numerical_gradient(lambda: loss_fn.forward(logits, targets), logits)
    assert relative_error(analytic, numeric) <= 1e-6
    assert not analytic[targets == 0].any()


def test_label_smoothing_float32_stays_float32():
    logits, targets = logits_and_targets(2)
    loss_fn = LabelSmoothingLoss(0.1, ignore_index=0)
    assert loss_fn.forward(logits.astype(np.float32), targets).dtype == np.float32
    assert loss_fn.backward().dtype == np.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: LabelSmoothingLoss(1.0), r"smoothing must be in \[0, 1\)"),
        (
            lambda: LabelSmoothingLoss(0.1, 0).forward(np.zeros((2, 3)), np.zeros(2, int)),
            "all padding",
        ),
        (lambda: LabelSmoothingLoss().forward(np.zeros((2, 3)), np.array([0, 3])), r"\[0, 3\)"),
        (lambda: LabelSmoothingLoss().forward(np.zeros((2, 3)), np.zeros(3, int)), "must match"),
    ],
)
def test_label_smoothing_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


class MLP(Module):
    def __init__(self, rng):
        super().__init__()
        self.layers = [Linear(4, 6, rng, dtype=np.float64), Linear(6, 3, rng, dtype=np.float64)]


def torch_copy(model):
    return [torch.tensor(p, requires_grad=True) for _, p, _ in model.named_parameters()]


def test_adam_equals_torch_adam_over_many_steps():
    rng = np.random.default_rng(0)
    model = MLP(rng)
    ref = torch_copy(model)
    opt = Adam(model, betas=(0.9, 0.98), eps=1e-9)
    ref_opt = torch.optim.Adam(ref, lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    for step in range(1, 101):
        lr = noam_lr(step, 64, warmup=10)
        for (_, _, grad), t in zip(model.named_parameters(), ref, strict=True):
            g = rng.standard_normal(grad.shape)
            grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step(lr)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.step()
    for (name, p, _), t in zip(model.named_parameters(), ref, strict=True):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_adam_state_round_trips():
    model = MLP(np.random.default_rng(0))
    opt = Adam(model)
    for _, _, g in model.named_parameters():
        g[...] = 1.0
    opt.step(0.1)
    other = Adam(model)
    other.load_state_dict(opt.state_dict())
    assert other.t == 1
    assert all(np.array_equal(other.m[k], opt.m[k]) for k in opt.m)


def test_noam_schedule_warms_up_then_decays():
    lrs = [noam_lr(s, 512, 4000) for s in range(1, 20001)]
    peak = int(np.argmax(lrs)) + 1
    assert peak == 4000
    assert lrs[peak - 1] == pytest.approx(512**-0.5 * 4000**-0.5)
    assert noam_lr(16000, 512, 4000) == pytest.approx(lrs[3999] / 2)
    with pytest.raises(ValueError, match="step counts from 1"):
        noam_lr(0, 512)


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0])
def test_clip_grad_norm_equals_torch(max_norm):
    rng = np.random.default_rng(3)
    model = MLP(rng)
    ref = torch_copy(model)
    for (_, _, grad), t in zip(model.named_parameters(), ref, strict=True):
        grad[...] = rng.standard_normal(grad.shape)
        t.grad = torch.from_numpy(grad.copy())
    norm = clip_grad_norm(model, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert norm == pytest.approx(ref_norm.item(), rel=1e-12)
    for (_, _, grad), t in zip(model.named_parameters(), ref, strict=True):
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12)


def test_batches_group_similar_lengths_and_shift_the_target():
    rng = np.random.default_rng(0)
    pairs = [
        (list(range(3, 3 + n)), list(range(5, 5 + m))) for n, m in rng.integers(1, 12, (50, 2))
    ]
    batches = make_batches(pairs, 8, pad_id=0, bos_id=1, eos_id=2, rng=rng)
    assert sum(len(b.src) for b in batches) == 50
    seen = set()
    for b in batches:
        lengths = (b.src != 0).sum(1)
        assert lengths.max() - lengths.min() <= 4  # sorted by length: neighbours
        assert (b.tgt_in[:, 0] == 1).all()
        n = (b.tgt_out != 0).sum(1)  # target + eos
        for row in range(len(b.src)):
            tgt = b.tgt_out[row, : n[row] - 1].tolist()
            assert b.tgt_out[row, n[row] - 1] == 2
            assert b.tgt_in[row, 1 : n[row]].tolist() == tgt
            seen.add((tuple(b.src[row, : lengths[row]].tolist()), tuple(tgt)))
    assert seen == {(tuple(s), tuple(t)) for s, t in pairs}


def test_pad_and_batching_errors():
    np.testing.assert_array_equal(pad([[1, 2], [3]], 0), [[1, 2], [3, 0]])
    with pytest.raises(ValueError, match="no pairs"):
        make_batches([], 4, 0, 1, 2)
    with pytest.raises(ValueError, match="at least one token"):
        make_batches([([], [3])], 4, 0, 1, 2)
