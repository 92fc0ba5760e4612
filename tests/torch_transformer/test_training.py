"""Part III training: the loss equals torch's, Adam equals torch.optim.Adam, the schedules
share lr_schedule's warmup, accumulation equals one big batch, and resumption is exact."""

import json
import math
from dataclasses import asdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from mlscratch.checkpoint import checkpoint_format, load_checkpoint, save_checkpoint
from mlscratch.llm.optim import AdamW, lr_schedule
from mlscratch.numpy_transformer.training import noam_lr
from mlscratch.torch_transformer import Transformer, TransformerConfig
from mlscratch.torch_transformer.batching import make_batch, token_batches
from mlscratch.torch_transformer.training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    TrainConfig,
    Trainer,
    accumulate,
    inverse_sqrt_lr,
    label_smoothing_loss,
    model_from_checkpoint,
    plot_history,
    train_config_from_dict,
)

PAD, BOS, EOS = 0, 1, 2


def small_model(dropout=0.0, dtype=torch.float32, seed=0, **kw):
    config = TransformerConfig(
        **{
            **dict(
                src_vocab_size=20,
                tgt_vocab_size=20,
                d_model=16,
                n_heads=2,
                d_ff=24,
                n_layers=1,
                dropout=dropout,
                max_len=32,
            ),
            **kw,
        }
    )
    return Transformer(config, seed=seed, dtype=dtype)


def trainer(model, pairs, out_dir=None, **kw):
    config = TrainConfig(
        **{**dict(batch_tokens=40, warmup_iters=3, learning_rate=3e-3, log_interval=2), **kw}
    )
    return Trainer(
        model, pairs, config, pad_id=PAD, bos_id=BOS, eos_id=EOS, out_dir=out_dir, progress=False
    )


def load(path):
    return load_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_KEYS)


# ---------------------------------------------------------------- the loss


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(2, 12),
    st.floats(0, 0.9),
    st.booleans(),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 10**6),
)
def test_loss_equals_torch_cross_entropy(B, T, V, smoothing, ignore, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=dtype) * 3).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = 1  # at least one target that is not padding
    ignore_index = 0 if ignore else None
    ours = label_smoothing_loss(logits, targets, smoothing, ignore_index)
    theirs = F.cross_entropy(
        logits.reshape(-1, V),
        targets.reshape(-1),
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=smoothing,
    )
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
    ours = [torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = AdamW(ours, lr=1e-2, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    for it in range(50):
        grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in ours]
        for opt, params in ((opt_ours, ours), (opt_theirs, theirs)):
            for group in opt.param_groups:
                group["lr"] = inverse_sqrt_lr(it, 1e-2, 10)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_schedules_count_iterations_from_0_with_lr_schedules_warmup():
    w = 100
    # inverse_sqrt warms up exactly as lr_schedule does, peaks at it = w, then decays
    assert all(
        inverse_sqrt_lr(it, 1e-3, w) == lr_schedule(it, 1e-3, w, 10 * w, 0.0) for it in range(w + 1)
    )
    assert inverse_sqrt_lr(0, 1e-3, w) == pytest.approx(1e-3 / (w + 1))
    assert inverse_sqrt_lr(w, 1e-3, w) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(4 * w, 1e-3, w) == pytest.approx(5e-4)
    assert max(inverse_sqrt_lr(it, 1e-3, w) for it in range(1000)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="it >= 0"):
        inverse_sqrt_lr(-1, 1e-3, w)
    # the configuration's three schedules: noam counts updates from 1, the others use it
    noam = TrainConfig(schedule="noam", learning_rate=2.0, warmup_iters=w)
    assert noam.lr_at(36, 64) == noam_lr(37, 64, w, 2.0)
    inv = TrainConfig(learning_rate=1e-3, warmup_iters=w)
    assert [inv.lr_at(it, 64) for it in range(300)] == [
        inverse_sqrt_lr(it, 1e-3, w) for it in range(300)
    ]
    cos = TrainConfig(
        schedule="cosine", learning_rate=1e-3, warmup_iters=w, max_iters=1000, min_lr=1e-5
    )
    assert [cos.lr_at(it, 64) for it in range(1100)] == [
        lr_schedule(it, 1e-3, w, 1000, 1e-5) for it in range(1100)
    ]
    early = TrainConfig(schedule="cosine", warmup_iters=w, max_iters=1000, lr_decay_iters=500)
    assert early.lr_at(500, 64) == early.min_lr == 0.0 and early.decay_iters == 500


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(schedule="linear"), "schedule"),
        (dict(schedule="cosine"), "needs max_iters or lr_decay_iters"),
        (dict(schedule="cosine", warmup_iters=10, max_iters=10), r"warmup_iters \(10\) must be"),
        (dict(schedule="cosine", max_iters=2000, min_lr=1.0), "min_lr"),
        (dict(batch_tokens=0), "batch_tokens"),
        (dict(gradient_accumulation_steps=1.5), "gradient_accumulation_steps"),
        (dict(learning_rate=0), "learning_rate"),
        (dict(label_smoothing=1), "label_smoothing"),
        (dict(grad_clip=-1), "grad_clip"),
        (dict(max_iters=0), "max_iters"),
        (dict(lr_decay_iters=0), "lr_decay_iters"),
        (dict(beta2=1.0), "beta2"),
        (dict(log_interval=0), "log_interval"),
    ],
)
def test_train_config_refuses_impossible_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


# ---------------------------------------------------------------- accumulation


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("norm_first", [False, True])
def test_accumulating_micro_batches_equals_one_big_batch(norm_first, random_pairs):
    pairs = random_pairs(24, seed=3)
    micro = token_batches(pairs, 40, PAD, BOS, EOS, seed=1)
    assert len(micro) >= 3
    big = make_batch(
        [
            (s, t)
            for b in micro
            for s, t in zip(
                [[x for x in row if x != PAD] for row in b.src.tolist()],
                [[x for x in row if x != PAD][:-1] for row in b.tgt_out.tolist()],
                strict=True,
            )
        ],
        PAD,
        BOS,
        EOS,
    )
    results = []
    for batches in (micro, [big]):
        model = small_model(dtype=torch.float64, norm_first=norm_first)
        loss = accumulate(model, batches, 0.1, PAD)
        results.append((loss / sum(b.n_tgt for b in batches), grads_of(model)))
    (loss_k, grads_k), (loss_1, grads_1) = results
    assert abs(loss_k.item() - loss_1.item()) <= 1e-6 * abs(loss_1.item())
    # relative to the largest entry: the key bias's gradient is zero in exact arithmetic
    scale = max(g.abs().max() for g in grads_1.values())
    for name in grads_1:
        assert (grads_k[name] - grads_1[name]).abs().max() <= 1e-6 * scale, name


def test_accumulation_steps_consume_micro_batches(random_pairs):
    pairs = random_pairs(30, seed=4)
    a = trainer(small_model(), pairs)
    b = trainer(small_model(), pairs, gradient_accumulation_steps=3)
    a.train(max_iters=3)
    b.train(max_iters=1)
    assert a.data.state_dict() == b.data.state_dict() and a.data.position > 0


# ---------------------------------------------------------------- training, checkpoints


def test_training_reduces_the_loss_and_logs(tmp_path, random_pairs):
    pairs = [(s, s[::-1]) for s, _ in random_pairs(64, seed=5, vocab=10, max_len=6)]
    model = small_model(d_model=32, n_heads=4, d_ff=64, n_layers=2)
    t = trainer(
        model,
        pairs,
        tmp_path,
        batch_tokens=200,
        learning_rate=1e-2,
        warmup_iters=10,
        log_interval=10,
    )
    before = t.evaluate(pairs)
    t.train(max_iters=80)
    after = t.evaluate(pairs)
    assert after < 0.6 * before
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert lines == t.history and [r["step"] for r in lines] == list(range(10, 81, 10))
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"]) for r in lines)
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_history(t.history + [{"step": 80, "val_loss": after}])
    assert len(ax.lines) == 2


def test_evaluate_is_the_mean_token_cross_entropy(random_pairs):
    pairs = random_pairs(10, seed=6)
    model = small_model(dropout=0.3)
    t = trainer(model, pairs)
    b = make_batch(pairs, PAD, BOS, EOS)
    model.eval()
    with torch.no_grad():
        logits = model(b.src, b.tgt_in)
    expected = F.cross_entropy(logits.reshape(-1, 20), b.tgt_out.reshape(-1), ignore_index=PAD)
    assert t.evaluate(pairs) == pytest.approx(expected.item(), rel=1e-5)


def run(pairs, steps_before_save, total, tmp_path, accumulation=2):
    """Train `total` updates, saving and restoring into fresh objects after the first ones."""
    kw = dict(batch_tokens=48, gradient_accumulation_steps=accumulation, log_interval=1)
    t = trainer(small_model(dropout=0.2), pairs, **kw)
    if steps_before_save is not None:
        t.train(max_iters=steps_before_save)
        t.save(tmp_path / "ckpt.pt")
        ckpt = load(tmp_path / "ckpt.pt")
        torch.manual_seed(1234)  # disturb the global generator: restore must undo it
        t = trainer(
            small_model(dropout=0.2, seed=99),
            pairs,
            **train_config_from_dict(ckpt["train_config"]).__dict__,
        )
        t.restore(ckpt)
    t.train(max_iters=total)
    return t


def test_resuming_from_a_checkpoint_is_identical_to_an_uninterrupted_run(tmp_path, random_pairs):
    pairs = random_pairs(40, seed=7)
    straight = run(pairs, None, 12, tmp_path)  # 24 micro-batches: several epochs of 40 pairs
    resumed = run(pairs, 5, 12, tmp_path)
    assert straight.data.epoch >= 2
    assert straight.data.state_dict() == resumed.data.state_dict()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    losses = [r["train_loss"] for r in straight.history]
    assert losses == [r["train_loss"] for r in resumed.history]


def test_checkpoint_round_trip(tmp_path, random_pairs):
    pairs = random_pairs(20)
    t = trainer(small_model(), pairs)
    t.vocab_path = "vocab.json"
    t.train(max_iters=3)
    t.save(tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left
    ckpt = load(tmp_path / "c.pt")
    assert ckpt["format"] == "mlscratch-translation-checkpoint-v2"
    assert ckpt["step"] == 3 and ckpt["vocab_path"] == "vocab.json"
    assert ckpt["config"] == asdict(t.model.config)
    assert train_config_from_dict(ckpt["train_config"]) == t.config
    model = model_from_checkpoint(ckpt)
    for (name, a), b in zip(model.state_dict().items(), t.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_corrupt_or_foreign_checkpoints_raise_one_line_errors(tmp_path, random_pairs):
    t = trainer(small_model(), random_pairs(10))
    t.save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    save_checkpoint({"weights": torch.zeros(2)}, tmp_path / "other.pt", checkpoint_format("gpt", 1))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "untagged.pt")
    ckpt = load(tmp_path / "good.pt")
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / "partial.pt")
    for name, message in [
        ("truncated.pt", "truncated.pt is not a readable checkpoint"),
        ("garbage.pt", "garbage.pt is not a readable checkpoint"),
        ("other.pt", "is a mlscratch-gpt-checkpoint-v1 file"),
        ("untagged.pt", "is not an mlscratch checkpoint"),
        ("partial.pt", "it lacks ['optimizer']"),
    ]:
        with pytest.raises(ValueError) as err:
            load(tmp_path / name)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


def test_a_version_1_checkpoint_fails_with_one_line_naming_both_formats(tmp_path, random_pairs):
    t = trainer(small_model(), random_pairs(10))
    t.train(max_iters=2)
    old = {**t.state_dict(), "format": "mlscratch-translation-checkpoint-v1"}
    old["train_config"] = {"lr": 1e-3, "warmup_steps": 3, "max_norm": None, "log_every": 2}
    torch.save(old, tmp_path / "v1.pt")  # the layout of version 1: other setting names
    with pytest.raises(ValueError) as err:
        load(tmp_path / "v1.pt")
    message = str(err.value)
    assert "\n" not in message
    assert "mlscratch-translation-checkpoint-v1" in message
    assert "mlscratch-translation-checkpoint-v2" in message


class Payload:
    def __reduce__(self):
        return (print, ("this code should never run",))


def test_loading_uses_weights_only(tmp_path):
    torch.save({"format": CHECKPOINT_FORMAT, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load(tmp_path / "evil.pt")


def test_mismatched_weights_are_named(tmp_path, random_pairs):
    t = trainer(small_model(), random_pairs(10))
    t.save(tmp_path / "c.pt")
    ckpt = load(tmp_path / "c.pt")
    ckpt["model"]["decoder.layers.0.ff.w_1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"decoder\.layers\.0\.ff\.w_1\.weight: expected shape"):
        trainer(small_model(), random_pairs(10)).restore(ckpt)
    with pytest.raises(ValueError, match=r"decoder\.layers\.0\.ff\.w_1\.weight"):
        model_from_checkpoint(ckpt)
    del ckpt["model"]["src_embed.weight"]
    with pytest.raises(ValueError, match=r"missing \['src_embed\.weight'\]"):
        model_from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"differs in \['d_ff'\]"):
        trainer(small_model(d_ff=8), random_pairs(10)).restore(load(tmp_path / "c.pt"))


def test_trainer_refuses_bad_arguments(random_pairs):
    model, pairs = small_model(), random_pairs(5)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(model, pairs, {"learning_rate": 1}, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="pad_id 3 differs"):
        Trainer(model, pairs, TrainConfig(), pad_id=3, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="eos_id 20 is outside"):
        Trainer(model, pairs, TrainConfig(), pad_id=PAD, bos_id=BOS, eos_id=20)
    t = trainer(model, [([25], [3])])  # an id outside the model's vocabulary
    with pytest.raises(ValueError, match=r"src ids must lie in \[0, 20\)"):
        t.train(max_iters=1)
    with pytest.raises(ValueError, match="no micro-batches"):
        accumulate(model, [], 0.0, PAD)
