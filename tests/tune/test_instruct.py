"""Instruction tuning: prompt format, response-only loss, padding, packing, translation."""

import pytest
import torch
import torch.nn.functional as F

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.text import synthetic
from mlscratch.tune.instruct import (
    IGNORE,
    SPECIAL_TOKENS,
    decode_response,
    encode_example,
    encode_prompt,
    encode_text,
    fit,
    format_example,
    instruction_examples,
    pack_examples,
    pack_windows,
    packed_batches,
    pad_batch,
    parse_example,
    special_ids,
    text_examples,
    train_tokenizer,
    translate,
)


@pytest.fixture(scope="module")
def pairs():
    return synthetic.make_pairs(300, seed=0)


@pytest.fixture(scope="module")
def tokenizer(pairs):
    return train_tokenizer(pairs, vocab_size=400)


def tiny_gpt(tokenizer, llama=False, fused=False, block_size=96, seed=0):
    torch.manual_seed(seed)
    sizes = dict(
        vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_embd=32
    )
    if llama:
        return GPT(GPTConfig.llama(n_kv_head=2, fused=fused, **sizes)).eval()
    return GPT(GPTConfig(fused=fused, **sizes)).eval()


def test_prompt_format_round_trip(tokenizer, pairs):
    src_id, tgt_id, end_id = special_ids(tokenizer)
    tricky = [("a <|de|> b <|end|>", "c <|en|> d"), ("", ""), ("Ein Bär.", "über Straße ß")]
    for source, target in [*pairs[:20], *tricky]:
        ids, n_prompt = format_example(tokenizer, source, target)
        assert ids[0] == src_id and ids[n_prompt - 1] == tgt_id and ids[-1] == end_id
        assert ids[:n_prompt] == encode_prompt(tokenizer, source)
        # the structure tokens appear once each: text can never forge them
        assert [ids.count(i) for i in (src_id, tgt_id, end_id)] == [1, 1, 1]
        assert parse_example(tokenizer, ids) == (source, target)


def test_response_only_targets(tokenizer, pairs):
    for source, target in pairs[:20]:
        ids, targets = encode_example(tokenizer, source, target)
        full, n_prompt = format_example(tokenizer, source, target)
        assert ids == full[:-1] and len(targets) == len(ids)
        assert targets[: n_prompt - 1] == [IGNORE] * (n_prompt - 1)
        assert targets[n_prompt - 1 :] == full[n_prompt:]  # the response, then <|end|>
        assert targets[-1] == special_ids(tokenizer)[2]
    ids, targets = encode_text(tokenizer, "ein Satz", "<|de|>")
    assert ids[0] == tokenizer.special_tokens["<|de|>"] and targets == [*ids[1:], targets[-1]]
    assert IGNORE not in targets
    assert len(text_examples(tokenizer, pairs[:5])) == 10


def test_masked_loss_equals_cross_entropy_on_response_tokens(tokenizer, pairs):
    model = tiny_gpt(tokenizer)
    examples = instruction_examples(tokenizer, pairs[:6])
    idx, targets = pad_batch(examples, pad_id=0)
    logits, loss = model(idx, targets)
    keep = targets != IGNORE
    reference = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    n_response = sum(
        len(format_example(tokenizer, *p)[0]) - format_example(tokenizer, *p)[1] for p in pairs[:6]
    )
    assert int(keep.sum()) == n_response


@pytest.mark.parametrize("llama", [False, True])
def test_right_padding_changes_nothing(tokenizer, pairs, llama):
    model = tiny_gpt(tokenizer, llama=llama)
    examples = instruction_examples(tokenizer, pairs[:5])
    for pad_id in (0, special_ids(tokenizer)[2]):
        idx, targets = pad_batch(examples, pad_id)
        logits = model(idx)[0]
        for b, (ids, _) in enumerate(examples):
            alone = model(torch.tensor([ids]))[0][0]
            torch.testing.assert_close(logits[b, : len(ids)], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("llama", [False, True])
def test_packing_equals_separate_runs(tokenizer, pairs, llama, fused):
    model = tiny_gpt(tokenizer, llama=llama, fused=fused)
    examples = instruction_examples(tokenizer, pairs[:30])
    idx, targets, doc = pack_examples(examples, block_size=96, pad_id=0)
    assert idx.shape[1] == 96 and len(idx) < len(examples)
    logits = model(idx, doc=doc)[0]
    seen = 0
    for w in range(len(idx)):
        for d in range(int(doc[w].max())):  # the last document of a window is its empty tail
            where = (doc[w] == d).nonzero()[:, 0]
            ids, tgt = examples[seen]
            assert idx[w, where].tolist() == ids and targets[w, where].tolist() == tgt
            alone = model(torch.tensor([ids]))[0][0]
            torch.testing.assert_close(logits[w, where], alone, rtol=1e-5, atol=1e-5)
            seen += 1
    assert seen == len(examples)
    assert (targets[doc == doc.amax(1, keepdim=True)] == IGNORE).all()


def test_packed_loss_and_gradients_equal_padded(tokenizer, pairs):
    """Same examples, same loss and same gradients, packed or padded."""
    examples = instruction_examples(tokenizer, pairs[:12])
    grads = []
    for packed in (True, False):
        model = tiny_gpt(tokenizer).train()
        if packed:
            idx, targets, doc = pack_examples(examples, 96, pad_id=0)
            loss = model(idx, targets, doc=doc)[1]
        else:
            loss = model(*pad_batch(examples, pad_id=0))[1]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_pack_windows():
    assert pack_windows([3, 3, 3, 5, 1], 6) == [[0, 1], [2], [3, 4]]
    with pytest.raises(ValueError, match="example 1 has 7 tokens, more than block_size=6"):
        pack_windows([3, 7], 6)


def test_packed_batches_cover_every_example(tokenizer, pairs):
    examples = instruction_examples(tokenizer, pairs[:40])
    batches = packed_batches(examples, 96, batch_size=4, pad_id=0, seed=1)
    n_targets = sum(sum(t != IGNORE for t in tgt) for _, tgt in examples)
    total, count = 0, 0
    while total < n_targets:  # one epoch
        idx, targets, doc = next(batches)
        assert idx.shape == targets.shape == doc.shape and idx.shape[0] <= 4
        total += int((targets != IGNORE).sum())
        count += 1
    assert total == n_targets


def greedy_by_hand(model, prompt, end_id, max_new_tokens):
    """Argmax decoding without cache or batching: the reference for translate."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([ids]))[0][0, -1].argmax())
        ids.append(token)
        if token == end_id:
            break
    return ids[len(prompt) :]


def test_translate_equals_greedy_by_hand(tokenizer, pairs):
    model = tiny_gpt(tokenizer, seed=3)
    sources = [s for s, _ in pairs[:12]]
    end_id = special_ids(tokenizer)[2]
    got = translate(model, tokenizer, sources, max_new_tokens=8, batch_size=5)
    assert got == translate(model, tokenizer, sources, max_new_tokens=8, batch_size=1)
    for source, text in zip(sources, got, strict=True):
        new = greedy_by_hand(model, encode_prompt(tokenizer, source), end_id, 8)
        assert text == decode_response(tokenizer, new)
    assert translate(model, tokenizer, []) == []


def test_generation_stops_at_the_end_token(tokenizer, pairs):
    """A model tuned to answer every prompt with <|end|> at once stops after one token."""
    model = tiny_gpt(tokenizer)
    examples = instruction_examples(tokenizer, [(s, "") for s, _ in pairs[:50]])
    batches = packed_batches(examples, 96, batch_size=8, pad_id=0)
    history = fit(model, batches, steps=60, learning_rate=1e-2, min_lr=1e-3)
    assert len(history) == 60 and history[-1][1] < 0.1
    assert not model.training
    end_id = special_ids(tokenizer)[2]
    prompt = torch.tensor([encode_prompt(tokenizer, pairs[0][0])])
    out = model.generate(prompt, 20, top_k=1, eos_id=end_id)
    assert out.shape[1] == prompt.shape[1] + 1 and int(out[0, -1]) == end_id
    assert translate(model, tokenizer, [s for s, _ in pairs[50:55]]) == [""] * 5
    assert decode_response(tokenizer, [*tokenizer.encode_ordinary("ab"), end_id, 5]) == "ab"


def test_bad_input(tokenizer, pairs):
    model = tiny_gpt(tokenizer, block_size=16)
    with pytest.raises(ValueError, match=r"sentence 1: its prompt of \d+ tokens .* block_size=16"):
        translate(model, tokenizer, ["ok", "a much longer sentence " * 5])
    with pytest.raises(ValueError, match="no sentence pairs"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match="no examples to pack"):
        pack_examples([], 16, pad_id=0)
    with pytest.raises(ValueError, match="no examples to batch"):
        pad_batch([], pad_id=0)
    with pytest.raises(ValueError, match="example 0 has 2 ids but 1 targets"):
        pad_batch([([1, 2], [3])], pad_id=0)
    with pytest.raises(ValueError, match="more than block_size=16"):
        pack_examples(instruction_examples(tokenizer, [("x " * 30, "y")]), 16, pad_id=0)
    plain = BPETokenizer.train("some text without the prompt tokens", 260)
    with pytest.raises(ValueError, match="lacks the prompt tokens"):
        encode_prompt(plain, "hello")
    with pytest.raises(ValueError, match="not an example"):
        parse_example(tokenizer, encode_prompt(tokenizer, "no response"))
    with pytest.raises(ValueError, match="tag must be one of"):
        encode_text(tokenizer, "x", "<|end|>")
    with pytest.raises(ValueError, match="exactly one of seconds and steps"):
        fit(model, iter([]), seconds=1, steps=1)
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="doc must be a tensor of idx's shape"):
        model(idx, doc=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot be combined with a key/value cache"):
        model(idx, doc=torch.zeros_like(idx), cache=model.new_cache())
    assert SPECIAL_TOKENS == ("<|en|>", "<|de|>", "<|end|>")
