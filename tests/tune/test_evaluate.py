"""Chapter "Evaluating a language model": sliding-window loss, bits per byte, multiple choice."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.simple_tokenizers import ByteTokenizer, CharTokenizer
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.text.corpus import DEFAULT_CORPUS_FILES
from mlscratch.tune.evaluate import (
    FIRST_LINE_FILES,
    MultipleChoice,
    completion_ids,
    evaluate_text,
    first_line_task,
    first_lines,
    multiple_choice_accuracy,
    score_choices,
    sliding_windows,
    token_log_probs,
)


class Table(nn.Module):
    """A bigram 'model': the logits at a position are the row of logp chosen by its token."""

    def __init__(self, logp):
        super().__init__()
        self.register_buffer("logp", torch.as_tensor(logp, dtype=torch.float32))

    def forward(self, idx):
        return self.logp[idx]


def uniform(vocab_size):
    return Table(torch.zeros(vocab_size, vocab_size))


def random_gpt(seed=0, vocab_size=50, block_size=16):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


@pytest.mark.parametrize("n_tokens", [2, 3, 9, 16, 17, 18, 50, 101])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_sliding_windows_score_every_target_once_with_enough_context(n_tokens, block_size):
    for stride in range(1, block_size + 1):
        targets = []
        for start, keep in sliding_windows(n_tokens, block_size, stride):
            stop = min(start + block_size, n_tokens - 1)  # the window's last target
            first = stop - keep + 1
            # every kept target reads at least block_size - stride tokens (or all before it)
            assert first - start >= min(first, block_size - stride + 1)
            targets += range(first, stop + 1)
        assert targets == list(range(1, n_tokens))


def test_stride_equal_to_window_is_cross_entropy_over_chunks():
    model, T = random_gpt(), 16
    ids = torch.randint(50, (6 * T + 1,), generator=torch.Generator().manual_seed(1))
    logp = token_log_probs(model, ids, block_size=T, stride=T, batch_size=4)
    x, y = ids[:-1].view(6, T), ids[1:].view(6, T)
    with torch.no_grad():
        ref = F.cross_entropy(model(x)[0].reshape(-1, 50), y.reshape(-1), reduction="none")
    torch.testing.assert_close(-logp, ref.double(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_one_window_is_the_models_own_loss(stride):
    model = random_gpt(2)
    ids = torch.randint(50, (1, 17), generator=torch.Generator().manual_seed(2))
    logp = token_log_probs(model, ids[0], stride=stride)  # 16 targets fit one window of 16
    with torch.no_grad():
        loss = model(ids[:, :-1], ids[:, 1:])[1]
    assert abs(-logp.mean().item() - loss.item()) < 1e-5


def test_a_context_free_model_ignores_the_stride():
    model = Table(torch.zeros(4, 4))  # context-free: the stride changes nothing
    ids = [0, 1, 2, 3] * 10
    a, b = (token_log_probs(model, ids, block_size=8, stride=s) for s in (8, 2))
    torch.testing.assert_close(a, b)


def test_bits_per_byte_of_uniform_models_by_hand():
    text = "héllo wörld, ça va?"  # 19 characters, 22 UTF-8 bytes
    n_bytes = len(text.encode())
    assert (len(text), n_bytes) == (19, 22)
    # bytes: 22 tokens, 21 scored, 21 bytes; a uniform guess over 256 is exactly 8 bits a byte
    r = evaluate_text(uniform(256), ByteTokenizer(), text, block_size=8)
    assert (r.n_tokens, r.n_bytes) == (21, 21)
    assert r.bits_per_byte == pytest.approx(8.0) and r.perplexity == pytest.approx(256)
    # characters: 19 tokens, 18 scored, whose bytes are all but the first ("h", 1 byte)
    chars = CharTokenizer.train(text)
    V = chars.vocab_size
    r = evaluate_text(uniform(V), chars, text, block_size=8, stride=3)
    assert (r.n_tokens, r.n_bytes) == (18, 21)
    assert r.loss == pytest.approx(math.log(V))
    assert r.bits_per_byte == pytest.approx(18 * math.log2(V) / 21)
    # BPE: all tokens but the first, whose bytes are subtracted from the text's
    bpe = BPETokenizer.train(text * 20, 270)
    ids = bpe.encode(text)
    first = len(bpe.decode_bytes(ids[:1]))
    r = evaluate_text(uniform(270), bpe, text, block_size=4, stride=2)
    assert (r.n_tokens, r.n_bytes) == (len(ids) - 1, n_bytes - first)
    assert len(ids) < len(text)
    assert r.bits_per_byte == pytest.approx((len(ids) - 1) * math.log2(270) / (n_bytes - first))


def test_bits_per_byte_of_a_bigram_model_by_hand():
    chars = CharTokenizer.train("ab")  # a: 0, b: 1
    table = Table(torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log())  # rows: after a, after b
    r = evaluate_text(table, chars, "aabab", block_size=2, stride=1)
    nll = -(math.log(0.25) + math.log(0.75) + math.log(0.5) + math.log(0.75))
    assert r.loss == pytest.approx(nll / 4)
    assert r.bits_per_byte == pytest.approx(nll / 4 / math.log(2))


@pytest.mark.parametrize("stride", [1, 7, 31])
def test_perplexity_equals_hf_guide_with_transformers_gpt2(stride):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    L = 32  # the guide's max_length: windows of L tokens, L - 1 predictions each
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=L, n_layer=2, n_head=2, n_embd=32)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(97, (1, 150), generator=torch.Generator().manual_seed(3))
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):  # the guide's loop
        end = min(begin + L, ids.shape[1])
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())  # the labels the shifted loss averages
        nll_sum, n_scored, prev_end = nll_sum + loss.item() * n, n_scored + n, end
        if end == ids.shape[1]:
            break
    ours = GPT.from_hf(hf).eval()
    logp = token_log_probs(ours, ids[0], block_size=L - 1, stride=stride, batch_size=3)
    assert n_scored == len(logp) == ids.shape[1] - 1
    assert math.exp(-logp.mean().item()) == pytest.approx(math.exp(nll_sum / n_scored), rel=1e-5)


def test_evaluate_text_bad_input():
    model = random_gpt()
    chars = CharTokenizer([chr(ord("a") + i) for i in range(50)])
    with pytest.raises(ValueError, match="need at least 2"):
        evaluate_text(model, chars, "a")
    with pytest.raises(ValueError, match="stride must be in"):
        evaluate_text(model, chars, "abcdef", block_size=4, stride=5)
    with pytest.raises(ValueError, match="block_size must be in"):
        evaluate_text(model, chars, "abcdef", block_size=17)
    with pytest.raises(ValueError, match="pass block_size"):
        evaluate_text(uniform(50), chars, "abcdef")


def hand_example():
    """Context "a"; the sum picks "." (ln .35), per character "bab" (ln(.55 .5 .55) / 3)."""
    chars = CharTokenizer.train("ab.")  # .: 0, a: 1, b: 2
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.35, 0.1, 0.55], [0.3, 0.5, 0.2]])
    return Table(probs.log()), chars


def test_score_choices_by_hand():
    model, chars = hand_example()
    scores = score_choices(model, chars, "a", [".", "ba", "bab"], block_size=8)
    ll = [math.log(0.35), math.log(0.55 * 0.5), math.log(0.55 * 0.5 * 0.55)]
    torch.testing.assert_close(scores["sum"], torch.tensor(ll, dtype=torch.float64))
    per = torch.tensor([ll[0], ll[1] / 2, ll[2] / 3], dtype=torch.float64)
    for norm in ("token", "char", "byte"):  # one token = one character = one byte here
        torch.testing.assert_close(scores[norm], per)
    assert int(scores["sum"].argmax()) == 0 and int(scores["char"].argmax()) == 2
    # pmi: minus the same completions after "." (a uniform row): only the first token differs
    pmi = score_choices(model, chars, "a", [".", "ba", "a"], block_size=8, neutral_context=".")
    expected = torch.tensor([math.log(0.35 * 3), math.log(0.55 * 3), math.log(0.1 * 3)])
    torch.testing.assert_close(pmi["pmi"], expected.double())
    # a longer context changes only what the first completion token is predicted from
    again = score_choices(model, chars, "b.ba", [".", "ba", "bab"], block_size=8)
    torch.testing.assert_close(again["sum"], scores["sum"])


def test_bytes_characters_and_tokens_normalize_differently():
    model = uniform(256)  # every byte costs ln 256
    scores = score_choices(model, ByteTokenizer(), "x", ["é", "ee"], block_size=8)
    torch.testing.assert_close(scores["sum"], -math.log(256) * torch.tensor([2.0, 2.0]).double())
    torch.testing.assert_close(scores["char"], -math.log(256) * torch.tensor([2.0, 1.0]).double())
    torch.testing.assert_close(scores["byte"], -math.log(256) * torch.tensor([1.0, 1.0]).double())
    torch.testing.assert_close(scores["token"], scores["byte"])


def test_multiple_choice_accuracy_by_hand():
    model, chars = hand_example()
    examples = [
        MultipleChoice("a", (".", "ba", "bab"), 0),  # sum right, normalized wrong
        MultipleChoice("a", (".", "ba", "bab"), 2),  # the reverse
        MultipleChoice("b", ("a", "b", "."), 0),  # 0.5 > 0.3 > 0.2: all right
    ]
    acc = multiple_choice_accuracy(model, chars, examples, block_size=8, batch_size=2)
    assert acc == {"sum": 2 / 3, "token": 2 / 3, "char": 2 / 3, "byte": 2 / 3}
    one = [MultipleChoice("a", (".", "ba", "a"), 1)]  # sum: ".", per character and pmi: "ba"
    acc = multiple_choice_accuracy(model, chars, one, block_size=8, neutral_context=".")
    assert acc == {"sum": 0.0, "token": 1.0, "char": 1.0, "byte": 1.0, "pmi": 1.0}


def test_completion_tokens_come_from_the_joint_encoding():
    bpe = BPETokenizer.train("def foo(bar):\n    return bar\n" * 50, 270)
    context, completion = "def foo(bar):\n", "    return bar"
    ids, n_context = completion_ids(bpe, context, completion, block_size=64)
    assert ids == bpe.encode(context + completion)
    assert n_context == len(bpe.encode(context))
    short, n_short = completion_ids(bpe, context, completion, block_size=6)  # left-cut
    assert len(ids) > 7 and short == ids[-7:] and n_short == n_context - (len(ids) - 7)
    with pytest.raises(ValueError, match="adds no token"):  # " b" + "ar" encode as " bar"
        completion_ids(bpe, "def foo(bar):\n    return b", "ar", block_size=64)


def test_multiple_choice_bad_input():
    model, chars = hand_example()
    with pytest.raises(ValueError, match="non-empty context"):
        score_choices(model, chars, "", ["a"], block_size=8)
    with pytest.raises(ValueError, match="non-empty context"):
        score_choices(model, chars, "a", ["b", ""], block_size=8)
    with pytest.raises(ValueError, match="more than the context"):
        score_choices(model, chars, "a", ["bababa"], block_size=4)
    with pytest.raises(ValueError, match="no examples"):
        multiple_choice_accuracy(model, chars, [], block_size=8)
    with pytest.raises(ValueError, match="answer"):
        multiple_choice_accuracy(model, chars, [MultipleChoice("a", ("b", "a"), 2)], block_size=8)


def test_first_lines_skip_docstrings_and_multiline_defs():
    source = 'def f(x):\n    """Doc."""\n    y = x + 1\n    return y\n\ndef g(\n    a):\n    pass\n'
    source += (
        "class C:\n    def m(self): return 1\n    async def n(self):\n        await self.m()\n"
    )
    assert first_lines(source) == [
        ("def f(x):", "y = x + 1"),
        ("async def n(self):", "await self.m()"),
    ]


def test_first_line_task_is_deterministic_and_unseen():
    assert not set(FIRST_LINE_FILES) & set(DEFAULT_CORPUS_FILES)
    a, b = first_line_task(50, seed=1), first_line_task(50, seed=1)
    assert a == b and a != first_line_task(50, seed=2) and len(a) == 50
    for example in a:
        assert len(set(example.choices)) == 4 and example.context.startswith(("def ", "async def "))
        assert all(c.startswith("    ") and not c.startswith("     ") for c in example.choices)
    assert 5 <= sum(e.answer == 0 for e in a) <= 20  # the right line's place is shuffled
