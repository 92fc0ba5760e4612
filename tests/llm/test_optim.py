"""Chapter "AdamW, clipping and the learning-rate schedule" (Part III): equal to PyTorch's,
step for step, on Part III's Transformer; the parameter groups also fit Part IV's GPT."""

import copy
import math

import pytest
import torch

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import AdamW, clip_grad_norm, configure_param_groups, lr_schedule
from mlscratch.torch_transformer import Transformer, TransformerConfig

V = 40


def tiny_model(dtype=torch.float32, seed=0):
    """Part III's Transformer, small: the model the optimizer chapter trains."""
    config = TransformerConfig(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=2,
        dropout=0.0,
        max_len=16,
    )
    return Transformer(config, seed=seed, dtype=dtype)


def loss_of(model, idx):
    """Cross-entropy of predicting idx shifted by one, with idx as the source."""
    logp = torch.log_softmax(model(idx, idx[:, :-1]), dim=-1)  # (B, T - 1, V)
    return -logp.gather(-1, idx[:, 1:, None]).mean()


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=12, n_layer=2, n_head=2, n_embd=16))


def groups(model, options):
    """Split the parameters into len(options) groups, each with its own options."""
    params = list(model.parameters())
    return [{"params": params[i :: len(options)], **opt} for i, opt in enumerate(options)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_adamw_equals_torch_after_100_steps(dtype, tol):
    ours_model = tiny_model(dtype)
    ref_model = copy.deepcopy(ours_model)
    options = [
        dict(lr=3e-3, weight_decay=0.1),
        dict(lr=1e-3, weight_decay=0.0),
        dict(lr=5e-3, weight_decay=0.5, betas=(0.8, 0.95), eps=1e-6),
    ]
    ours = AdamW(groups(ours_model, options), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    ref = torch.optim.AdamW(
        groups(ref_model, options), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01, foreach=False
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        idx = torch.randint(1, V, (3, 12), generator=g)
        loss = loss_of(ours_model, idx)
        ours.zero_grad()
        loss.backward()
        # the same gradients for both: copy ours into the reference model
        for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    worst = max(
        (p - q).abs().max().item()
        for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True)
    )
    start = tiny_model(dtype).parameters()
    moved = max(
        (p - q).abs().max().item() for p, q in zip(ours_model.parameters(), start, strict=True)
    )
    assert moved > 0.05  # the parameters did move
    assert worst <= tol, f"max parameter difference {worst:.2e} > {tol:.0e}"


def test_state_dict_round_trip_continues_identically():
    a = tiny_model(torch.float64)
    b = copy.deepcopy(a)
    opt_a = AdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    idx = torch.randint(1, V, (2, 12))
    for step in range(6):
        if step == 3:  # resume b from a's checkpoint
            b.load_state_dict(copy.deepcopy(a.state_dict()))
            opt_b = AdamW(b.parameters(), lr=0.5)
            opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a checkpoint
        for model, opt in [(a, opt_a)] + ([(b, opt_b)] if step >= 3 else []):
            opt.zero_grad()
            loss_of(model, idx).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_lambda_lr_scheduler_drives_our_optimizer():
    model = tiny_model()
    opt = AdamW(configure_param_groups(model, 0.1, ("src_embed", "tgt_embed")), lr=2e-3)
    opt.param_groups[1]["lr"] = 1e-3  # a per-group rate, before the scheduler records it

    def factor(it):
        return lr_schedule(it, 1.0, warmup_iters=5, lr_decay_iters=20, min_lr=0.1)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    for it in range(1, 25):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * factor(it), rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(1e-3 * factor(it), rel=1e-12)


def test_param_groups_exclude_biases_norms_and_embeddings():
    model = tiny_gpt()  # Part IV's GPT, with the default embedding names
    decay, no_decay = configure_param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {
        n
        for n, p in model.named_parameters()
        if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert {"wte", "wpe", "ln_f.weight", "h.0.attn.c_attn.bias"} <= {
        names[id(p)] for p in no_decay["params"]
    }


def test_param_groups_of_the_transformer_name_its_embeddings():
    model = tiny_model()
    decay, no_decay = configure_param_groups(model, 0.1, ("src_embed", "tgt_embed"))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in model.named_parameters() if p.ndim == 2 and "_embed" not in n
    }
    assert {
        "src_embed.weight",
        "tgt_embed.weight",
        "encoder.layers.0.norm1.weight",
        "decoder.layers.1.ff.w_2.bias",
    } <= {names[id(p)] for p in no_decay["params"]}
    # with the GPT's default names nothing of the Transformer counts as an embedding
    decay, _ = configure_param_groups(model, 0.1)
    assert len(decay["params"]) == sum(p.ndim == 2 for p in model.parameters())


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipped, and left alone
def test_clip_grad_norm_equals_torch(max_norm):
    a = tiny_model()
    b = copy.deepcopy(a)
    idx = torch.randint(1, V, (2, 12))
    for model in (a, b):
        loss_of(model, idx).backward()
    ours = clip_grad_norm(a.parameters(), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    if max_norm < ref:
        after = math.sqrt(sum((p.grad.double() ** 2).sum().item() for p in a.parameters()))
        assert after == pytest.approx(max_norm, rel=1e-4)


def test_lr_schedule_shape():
    lr = [lr_schedule(it, 1.0, 10, 100, 0.1) for it in range(120)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)
    assert lr[10] == pytest.approx(1.0) and lr[100] == pytest.approx(0.1)
    assert lr[55] == pytest.approx(0.55)  # halfway down the cosine: the midpoint
    assert all(x == 0.1 for x in lr[101:])
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr must be >= 0"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_optimizer_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW(tiny_model().parameters(), **kwargs)


def test_bad_schedule_and_clip_options():
    with pytest.raises(ValueError, match="warmup_iters < lr_decay_iters"):
        lr_schedule(0, 1.0, 10, 10, 0.1)
    with pytest.raises(ValueError, match="min_lr <= learning_rate"):
        lr_schedule(0, 1.0, 1, 10, 2.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(tiny_model().parameters(), 0.0)
