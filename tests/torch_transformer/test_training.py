"""Part II training: the loss equals torch's, Adam equals torch.optim.Adam, batches cover the
data within their budget, accumulation equals one big batch, and resumption is exact."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from mlscratch.llm.optim import AdamW
from mlscratch.numpy_transformer.training import noam_lr
from mlscratch.torch_transformer import Transformer, TransformerConfig
from mlscratch.torch_transformer.training import (
    TrainConfig,
    Trainer,
    cosine_lr,
    inverse_sqrt_lr,
    label_smoothing_loss,
    load_checkpoint,
    make_batch,
    model_from_checkpoint,
    plot_history,
    save_atomic,
    token_batches,
    train_config_from_dict,
)

PAD, BOS, EOS = 0, 1, 2


def random_pairs(n, seed=0, vocab=20, max_len=9):
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, rng.integers(1, max_len)).tolist(),
             rng.integers(3, vocab, rng.integers(0, max_len)).tolist()) for _ in range(n)]


def small_model(dropout=0.0, dtype=torch.float32, seed=0, **kw):
    config = TransformerConfig(**{**dict(src_vocab_size=20, tgt_vocab_size=20, d_model=16,
                                         n_heads=2, d_ff=24, n_layers=1, dropout=dropout,
                                         max_len=32), **kw})
    return Transformer(config, seed=seed, dtype=dtype)


def trainer(model, pairs, progress=False, **kw):
    config = TrainConfig(**{**dict(batch_tokens=40, warmup_steps=3, lr=3e-3, log_every=2), **kw})
    return Trainer(model, pairs, config, pad_id=PAD, bos_id=BOS, eos_id=EOS, progress=progress)


# ---------------------------------------------------------------- the loss


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(2, 12), st.floats(0, 0.9),
       st.booleans(), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 10**6))
def test_loss_equals_torch_cross_entropy(B, T, V, smoothing, ignore, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=dtype) * 3).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = 1  # at least one target that is not padding
    ignore_index = 0 if ignore else None
    ours = label_smoothing_loss(logits, targets, smoothing, ignore_index)
    theirs = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
                             ignore_index=-100 if ignore_index is None else ignore_index,
                             label_smoothing=smoothing)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=tol, atol=tol)
    n = (targets != 0).sum() if ignore else targets.numel()
    total = label_smoothing_loss(logits, targets, smoothing, ignore_index, "sum")
    torch.testing.assert_close(total, theirs * n, rtol=tol, atol=tol)


def test_loss_refuses_bad_input():
    logits, targets = torch.zeros(2, 3, 5), torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="integer tensor"):
        label_smoothing_loss(logits, targets.float())
    with pytest.raises(TypeError, match="floating-point"):
        label_smoothing_loss(logits.long(), targets)
    with pytest.raises(ValueError, match="must match"):
        label_smoothing_loss(logits, targets[:, :2])
    with pytest.raises(ValueError, match=r"lie in \[0, 5\), got 1..5"):
        label_smoothing_loss(logits, targets.index_fill(1, torch.tensor([0]), 5))
    with pytest.raises(ValueError, match="all padding"):
        label_smoothing_loss(logits, targets * 0, ignore_index=0)
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_loss(logits, targets, smoothing=1.0)
    # ignored positions may hold any id, even outside the vocabulary
    ok = targets.clone()
    ok[0, 0] = -100
    assert torch.isfinite(label_smoothing_loss(logits, ok, ignore_index=-100))


# ---------------------------------------------------------------- optimizer and schedules


def test_adam_equals_torch_adam():
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in
            range(2)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = AdamW(ours, lr=1e-2, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    for step in range(1, 51):
        grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in ours]
        for opt, params in ((opt_ours, ours), (opt_theirs, theirs)):
            for group in opt.param_groups:
                group["lr"] = inverse_sqrt_lr(step, 1e-2, 10)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_schedules():
    w = 100
    assert inverse_sqrt_lr(w, 1e-3, w) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(w // 2, 1e-3, w) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(4 * w, 1e-3, w) == pytest.approx(5e-4)
    peak = max(inverse_sqrt_lr(s, 1e-3, w) for s in range(1, 1000))
    assert peak == pytest.approx(1e-3)
    assert cosine_lr(w, 1e-3, w, 1000) == pytest.approx(1e-3)
    assert cosine_lr(1000, 1e-3, w, 1000, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(5000, 1e-3, w, 1000, 1e-5) == pytest.approx(1e-5)
    config = TrainConfig(schedule="noam", lr=2.0, warmup_steps=w)
    assert config.learning_rate(37, 64) == noam_lr(37, 64, w, 2.0)
    with pytest.raises(ValueError, match="counts from 1"):
        inverse_sqrt_lr(0, 1e-3, w)


@pytest.mark.parametrize("bad, match", [
    (dict(schedule="linear"), "schedule"), (dict(schedule="cosine"), "needs max_steps"),
    (dict(batch_tokens=0), "batch_tokens"), (dict(accum_steps=1.5), "accum_steps"),
    (dict(lr=0), "lr"), (dict(smoothing=1), "smoothing"), (dict(max_norm=-1), "max_norm"),
    (dict(max_steps=0), "max_steps"),
])
def test_train_config_refuses_impossible_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


# ---------------------------------------------------------------- batches


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(12, 80), st.integers(0, 10**6))
def test_token_batches_cover_every_pair_once_within_budget(n, budget, seed):
    pairs = random_pairs(n, seed)
    batches = token_batches(pairs, budget, PAD, BOS, EOS, seed=(seed, 1))
    seen = []
    for b in batches:
        B, S = b.src.shape
        T = b.tgt_in.shape[1]
        assert B * max(S, T) <= budget
        assert b.tgt_out.shape == b.tgt_in.shape
        assert torch.equal(b.tgt_in[:, 0], torch.full((B,), BOS))
        assert b.n_tgt == int((b.tgt_out != PAD).sum()) and b.n_src == int((b.src != PAD).sum())
        for i in range(B):
            src = [t for t in b.src[i].tolist() if t != PAD]
            out = [t for t in b.tgt_out[i].tolist() if t != PAD]
            assert out[-1] == EOS and b.tgt_in[i, 1 : len(out)].tolist() == out[:-1]
            seen.append((src, out[:-1]))
    assert sorted(seen) == sorted(pairs)


def test_token_batches_order_depends_on_the_seed_only():
    pairs = random_pairs(200)
    first = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 0))
    again = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 0))
    other = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 1))
    assert all(torch.equal(a.src, b.src) for a, b in zip(first, again, strict=True))
    assert [b.src.shape for b in first] != [b.src.shape for b in other]
    unshuffled = token_batches(pairs, 64, PAD, BOS, EOS)
    widths = [max(b.src.shape[1], b.tgt_in.shape[1]) for b in unshuffled]
    assert widths == sorted(widths)


def test_token_batches_refuse_bad_input():
    with pytest.raises(ValueError, match="no pairs"):
        token_batches([], 10, PAD, BOS, EOS)
    with pytest.raises(ValueError, match="pair 1 has an empty source"):
        token_batches([([3], [4]), ([], [4])], 10, PAD, BOS, EOS)
    with pytest.raises(ValueError, match="pair 0 alone needs 6 tokens"):
        token_batches([([3], [4] * 5)], 5, PAD, BOS, EOS)


# ---------------------------------------------------------------- accumulation


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("norm_first", [False, True])
def test_accumulating_micro_batches_equals_one_big_batch(norm_first):
    pairs = random_pairs(24, seed=3)
    micro = token_batches(pairs, 40, PAD, BOS, EOS, seed=1)
    assert len(micro) >= 3
    big = make_batch([(s, t) for b in micro for s, t in zip(
        [[x for x in row if x != PAD] for row in b.src.tolist()],
        [[x for x in row if x != PAD][:-1] for row in b.tgt_out.tolist()], strict=True)],
        PAD, BOS, EOS)
    results = []
    for batches in (micro, [big]):
        model = small_model(dtype=torch.float64, norm_first=norm_first)
        t = trainer(model, pairs, batch_tokens=10**4, smoothing=0.1)
        loss = t.accumulate(batches)
        results.append((loss / sum(b.n_tgt for b in batches), grads_of(model)))
    (loss_k, grads_k), (loss_1, grads_1) = results
    assert abs(loss_k.item() - loss_1.item()) <= 1e-6 * abs(loss_1.item())
    # relative to the largest entry: the key bias's gradient is zero in exact arithmetic
    scale = max(g.abs().max() for g in grads_1.values())
    for name in grads_1:
        assert (grads_k[name] - grads_1[name]).abs().max() <= 1e-6 * scale, name


def test_accumulation_steps_consume_micro_batches():
    pairs = random_pairs(30, seed=4)
    a, b = trainer(small_model(), pairs), trainer(small_model(), pairs, accum_steps=3)
    a.train(max_steps=3)
    b.train(max_steps=1)
    assert (a.epoch, a.position) == (b.epoch, b.position)


# ---------------------------------------------------------------- training, checkpoints


def test_training_reduces_the_loss_and_logs(tmp_path):
    pairs = [(s, s[::-1]) for s, _ in random_pairs(64, seed=5, vocab=10, max_len=6)]
    model = small_model(d_model=32, n_heads=4, d_ff=64, n_layers=2)
    t = trainer(model, pairs, batch_tokens=200, lr=1e-2, warmup_steps=10, log_every=10)
    t.out_dir = tmp_path
    before = t.evaluate(pairs)
    t.train(max_steps=80)
    after = t.evaluate(pairs)
    assert after < 0.6 * before
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert lines == t.history and [r["step"] for r in lines] == list(range(10, 81, 10))
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"]) for r in lines)
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_history(t.history + [{"step": 80, "val_loss": after}])
    assert len(ax.lines) == 2


def test_evaluate_is_the_mean_token_cross_entropy():
    pairs = random_pairs(10, seed=6)
    model = small_model(dropout=0.3)
    t = trainer(model, pairs)
    b = make_batch(pairs, PAD, BOS, EOS)
    model.eval()
    with torch.no_grad():
        logits = model(b.src, b.tgt_in)
    expected = F.cross_entropy(logits.reshape(-1, 20), b.tgt_out.reshape(-1), ignore_index=PAD)
    assert t.evaluate(pairs) == pytest.approx(expected.item(), rel=1e-5)


def run(steps_before_save, total, tmp_path, accum_steps=2):
    """Train `total` updates, saving and restoring into fresh objects after the first ones."""
    pairs = random_pairs(40, seed=7)
    kw = dict(batch_tokens=48, accum_steps=accum_steps, log_every=1)
    t = trainer(small_model(dropout=0.2), pairs, **kw)
    if steps_before_save is not None:
        t.train(max_steps=steps_before_save)
        t.save(tmp_path / "ckpt.pt")
        ckpt = load_checkpoint(tmp_path / "ckpt.pt")
        torch.manual_seed(1234)  # disturb the global generator: restore must undo it
        t = trainer(small_model(dropout=0.2, seed=99), pairs,
                    **train_config_from_dict(ckpt["train_config"]).__dict__)
        t.restore(ckpt)
    t.train(max_steps=total)
    return t


def test_resuming_from_a_checkpoint_is_identical_to_an_uninterrupted_run(tmp_path):
    straight = run(None, 12, tmp_path)  # 24 micro-batches: several epochs of 40 pairs
    resumed = run(5, 12, tmp_path)
    assert straight.epoch >= 2 and (straight.epoch, straight.position) == (resumed.epoch,
                                                                           resumed.position)
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    losses = [r["train_loss"] for r in straight.history]
    assert losses == [r["train_loss"] for r in resumed.history]


def test_checkpoint_round_trip(tmp_path):
    pairs = random_pairs(20)
    t = trainer(small_model(), pairs)
    t.vocab_path = "vocab.json"
    t.train(max_steps=3)
    t.save(tmp_path / "c.pt")
    assert not (tmp_path / "c.pt.tmp").exists()
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["step"] == 3 and ckpt["vocab_path"] == "vocab.json"
    assert ckpt["config"] == asdict(t.model.config)
    assert train_config_from_dict(ckpt["train_config"]) == t.config
    model = model_from_checkpoint(ckpt)
    for (name, a), b in zip(model.state_dict().items(), t.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_corrupt_or_foreign_checkpoints_raise_clear_errors(tmp_path):
    t = trainer(small_model(), random_pairs(10))
    t.save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(ValueError, match=f"{name} is not a readable checkpoint"):
            load_checkpoint(tmp_path / name)
    save_atomic({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ckpt = load_checkpoint(tmp_path / "good.pt")
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"lacks the fields \['optimizer'\]"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this code should never run",))


def test_loading_uses_weights_only(tmp_path):
    torch.save({"format": "mlscratch-translation-checkpoint-v1", "x": Payload()},
               tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_mismatched_weights_are_named(tmp_path):
    t = trainer(small_model(), random_pairs(10))
    t.save(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    ckpt["model"]["decoder.layers.0.ff.w_1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"decoder\.layers\.0\.ff\.w_1\.weight: expected shape"):
        trainer(small_model(), random_pairs(10)).restore(ckpt)
    with pytest.raises(ValueError, match=r"decoder\.layers\.0\.ff\.w_1\.weight"):
        model_from_checkpoint(ckpt)
    del ckpt["model"]["src_embed.weight"]
    with pytest.raises(ValueError, match=r"missing \['src_embed\.weight'\]"):
        model_from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"differs in \['d_ff'\]"):
        trainer(small_model(d_ff=8), random_pairs(10)).restore(load_checkpoint(
            tmp_path / "c.pt"))


def test_trainer_refuses_bad_arguments():
    model, pairs = small_model(), random_pairs(5)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(model, pairs, {"lr": 1}, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="pad_id 3 differs"):
        Trainer(model, pairs, TrainConfig(), pad_id=3, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="eos_id 20 is outside"):
        Trainer(model, pairs, TrainConfig(), pad_id=PAD, bos_id=BOS, eos_id=20)
    t = trainer(model, [([25], [3])])  # an id outside the model's vocabulary
    with pytest.raises(ValueError, match=r"src ids must lie in \[0, 20\)"):
        t.train(max_steps=1)
    with pytest.raises(ValueError, match="no micro-batches"):
        trainer(model, pairs).accumulate([])
