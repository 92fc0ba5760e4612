"""Chapter "LoRA": our adapters equal peft's LoRA on a transformers GPT-2, merge and unmerge."""

import copy
import math

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import AdamW
from mlscratch.tune.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    finetune,
    kaiming_uniform_,
    lm_batches,
    lora_modules,
    lora_state_dict,
    merge_lora,
    peak_memory,
    unmerge_lora,
)

transformers.logging.set_verbosity_error()
PREFIX = "base_model.model.transformer."


def hf_gpt2(seed=0, n_layer=2, n_head=2, n_embd=16, vocab=50, n_pos=24):
    """A random float64 transformers GPT-2 whose every tensor matters (gains, biases too)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=n_pos, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        attn_implementation="eager",
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (p.ndim == 1))
    return model


def peft_and_ours(targets, r=4, alpha=8, fused=False, seed=0):
    """(peft model, our GPT) with the same base weights and the same non-zero adapters."""
    hf = hf_gpt2(seed)
    ours = GPT.from_hf(hf)
    ours.config.fused = fused
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), fan_in_fan_out=True,
        lora_dropout=0.0,
    )  # fmt: skip
    theirs = get_peft_model(hf, config).double().eval()
    add_lora(ours, r=r, alpha=alpha, targets=targets).eval()
    g = torch.Generator().manual_seed(seed + 1)
    mine = dict(lora_modules(ours))
    copied = 0
    with torch.no_grad():
        for name, m in theirs.named_modules():
            if hasattr(m, "lora_A") and name.startswith(PREFIX):
                A, B = m.lora_A["default"].weight, m.lora_B["default"].weight  # (r, in), (out, r)
                B.copy_(torch.randn(B.shape, generator=g, dtype=B.dtype) * 0.5)  # B != 0
                A.copy_(torch.randn(A.shape, generator=g, dtype=A.dtype) * 0.5)
                target = mine[name[len(PREFIX) :]]
                target.lora_A.copy_(A)  # same layout as ours: no transpose
                target.lora_B.copy_(B)
                copied += 1
    assert copied == len(mine) > 0
    return theirs, ours


def adapter_pairs(theirs, ours):
    """[(our LoRALinear, peft's LoRA layer)] by name."""
    mine = dict(lora_modules(ours))
    return [
        (mine[name[len(PREFIX) :]], m)
        for name, m in theirs.named_modules()
        if hasattr(m, "lora_A") and name.startswith(PREFIX)
    ]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("targets", [("c_attn",), ("c_attn", "c_proj", "c_fc"), ("attn.c_proj",)])
def test_equal_to_peft_outputs_and_gradients(targets, fused):
    theirs, ours = peft_and_ours(targets, fused=fused)
    idx = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(5))
    expected = theirs(input_ids=idx).logits
    got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    (expected.square().mean()).backward()
    (got.square().mean()).backward()
    pairs = adapter_pairs(theirs, ours)
    assert len(pairs) == len(lora_modules(ours))
    for mine, peft_layer in pairs:
        torch.testing.assert_close(
            mine.lora_A.grad, peft_layer.lora_A["default"].weight.grad, rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            mine.lora_B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-9, atol=1e-12
        )
    for name, p in ours.named_parameters():  # frozen, as in peft: no gradient at all
        assert (p.grad is None) != ("lora_" in name), name


def test_trainable_counts_equal_peft():
    theirs, ours = peft_and_ours(("c_attn", "c_proj", "c_fc"))
    peft_trainable, peft_total = theirs.get_nb_trainable_parameters()
    trainable, total = count_parameters(ours)
    assert trainable == peft_trainable
    assert total == peft_total  # both count the tied embedding once


def test_init_is_torch_kaiming_uniform_and_b_zero():
    A = torch.empty(8, 37, dtype=torch.float64)
    torch.manual_seed(3)
    kaiming_uniform_(A)
    reference = torch.empty_like(A)
    torch.manual_seed(3)
    torch.nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(A, reference)
    assert A.abs().max() <= 1 / math.sqrt(37)
    model = add_lora(GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                     r=2, alpha=4)  # fmt: skip
    layer = model.h[0].attn.c_attn
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (24, 2)
    assert torch.equal(layer.lora_B, torch.zeros(24, 2))


def test_starts_as_the_base_model_and_shares_its_weights():
    base = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    adapted = add_lora(copy.deepcopy(base), r=3, alpha=6, targets=("c_attn", "c_fc"))
    idx = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(adapted(idx)[0], base(idx)[0], rtol=0, atol=0)
    layer = adapted.h[1].mlp.c_fc
    assert isinstance(layer, LoRALinear) and layer.scaling == 2.0
    keys = set(adapted.state_dict())
    assert set(base.state_dict()) <= keys  # the base names unchanged
    assert keys - set(base.state_dict()) == set(lora_state_dict(adapted))


def test_merge_then_unmerge_restores_weights_and_merged_logits_equal():
    theirs, ours = peft_and_ours(("c_attn", "c_proj", "c_fc"))
    idx = torch.randint(0, 50, (2, 24))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    adapter_logits, _ = ours(idx)
    merge_lora(ours)
    assert all(m.merged for _, m in lora_modules(ours))
    merged_logits, _ = ours(idx)
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-10, atol=1e-10)
    peft_merged = theirs.merge_and_unload()  # peft's merged Conv1D weights (d_in, d_out)
    torch.testing.assert_close(
        ours.h[1].attn.c_attn.weight, peft_merged.transformer.h[1].attn.c_attn.weight.T
    )
    unmerge_lora(ours)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours(idx)[0], adapter_logits, rtol=1e-10, atol=1e-10)


def test_only_the_adapters_change_after_a_step():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    add_lora(model, r=2, alpha=4, targets=("c_attn", "c_proj"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(2):  # the second step moves A too (its gradient is zero while B = 0)
        idx = torch.randint(0, 40, (4, 16))
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) != ("lora_" in k), k
    assert len(optimizer.state) == 2 * 3 * 2  # A and B of c_attn and both c_proj, 2 blocks


def test_dropout_on_the_adapter_input():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    add_lora(model, r=4, alpha=4, dropout=0.5)
    with torch.no_grad():
        model.h[0].attn.c_attn.lora_B.normal_()
    idx = torch.randint(0, 40, (2, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    frozen = GPT(model.config)  # without the adapter, training mode changes nothing here
    frozen.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    frozen.train()
    assert torch.equal(frozen(idx)[0], frozen(idx)[0])


def test_swiglu_gate_and_llama_layout():
    cfg = GPTConfig.llama(vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = add_lora(GPT(cfg), r=2, alpha=2, targets=("c_gate", "c_fc"))
    assert [n for n, _ in lora_modules(model)] == [
        "h.0.mlp.c_fc", "h.0.mlp.c_gate", "h.1.mlp.c_fc", "h.1.mlp.c_gate",
    ]  # fmt: skip
    assert model.h[0].mlp.c_gate.bias is None
    model(torch.randint(0, 30, (1, 8)))[0].sum().backward()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0, alpha=1), "r (the rank) must be a positive integer, got 0"),
        (dict(r=2.0, alpha=1), "r (the rank) must be a positive integer, got 2.0"),
        (dict(r=2, alpha=0), "alpha must be a number > 0, got 0"),
        (dict(r=2, alpha=-1.5), "alpha must be a number > 0, got -1.5"),
        (dict(r=2, alpha=1, dropout=1.0), "dropout must be in [0, 1), got 1.0"),
        (dict(r=2, alpha=1, targets=()), "targets must be module names"),
        (dict(r=2, alpha=1, targets=("q_proj",)), "no module matches targets ('q_proj',)"),
        (dict(r=2, alpha=1, targets="ln_1"), "target h.0.ln_1 is a Norm: LoRA adapts Linear"),
    ],
)
def test_bad_options_one_clear_line(kwargs, message):
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError) as err:
        add_lora(model, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert all(p.requires_grad for p in model.parameters())  # nothing changed


def test_wrong_states_one_clear_line():
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="no LoRA adapters: call add_lora first"):
        merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters: call add_lora first"):
        unmerge_lora(model)
    add_lora(model, r=2, alpha=2)
    with pytest.raises(ValueError, match=r"adapters already \(h.0.attn.c_attn\): call add_lora"):
        add_lora(model, r=2, alpha=2)
    with pytest.raises(ValueError, match="not merged .*: nothing to unmerge"):
        unmerge_lora(model)
    merge_lora(model)
    with pytest.raises(ValueError, match="merged already .*: unmerge_lora first"):
        merge_lora(model)
    unmerge_lora(model)


def test_finetune_and_peak_memory():
    torch.manual_seed(0)
    model = add_lora(GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                     r=2, alpha=2)  # fmt: skip
    data = torch.randint(0, 30, (200,)).numpy()
    seconds, evals = finetune(model, lm_batches(data, 8, 4), 4, 1e-2,
                              evaluate=lambda m: 1.0, eval_every=2)  # fmt: skip
    assert len(seconds) == 4 and [s for s, _ in evals] == [0, 2, 4]
    seconds, evals = finetune(model, lm_batches(data, 8, 4), 4, 1e-2, lambda m: 1.0,
                              max_seconds=0.0)  # fmt: skip
    assert seconds == [] and evals == [(0, 1.0)]  # a budget of no time: no step
    peak, result = peak_memory(lambda: torch.ones(1 << 18).sum())  # 1 MiB of float32
    assert 1 << 20 <= peak < (1 << 20) + 4096 and result == 1 << 18
