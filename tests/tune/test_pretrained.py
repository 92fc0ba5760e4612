"""Chapter "Starting from pretrained weights": files written by transformers, read from scratch."""

import json
import random

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from mlscratch.llm.gpt import GPTConfig
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.llm.train import TrainConfig, train
from mlscratch.text.corpus import default_corpus
from mlscratch.tune.pretrained import (
    load_hf_model,
    load_hf_tokenizer,
    load_pretrained,
    load_safetensors,
    load_state_dir,
    read_gpt2_tokenizer,
    read_hf_config,
    read_hf_tokenizer_json,
    save_gpt2_tokenizer,
)

transformers.logging.set_verbosity_error()
SPECIAL = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer():
    text = default_corpus()[:150_000]
    return BPETokenizer.train(text, 400, pattern="gpt2", special_tokens=[SPECIAL])


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (p.ndim == 1))
    return model.eval()


def hf_gpt2(vocab):
    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_layer=2, n_head=2, n_embd=16)
    return randomize(GPT2LMHeadModel(cfg))


def hf_llama(vocab):
    cfg = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=16,
        intermediate_size=24,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize(LlamaForCausalLM(cfg), 1)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def saved(request, tokenizer, tmp_path_factory):
    """(directory, transformers model) of a model saved with save_pretrained and our tokenizer."""
    hf = (hf_gpt2 if request.param == "gpt2" else hf_llama)(tokenizer.vocab_size)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    save_gpt2_tokenizer(tokenizer, path)
    return path, hf


def test_safetensors_reader_equals_the_library(saved, tmp_path):
    path = saved[0] / "model.safetensors"
    ours, ref = load_safetensors(path), load_file(path)
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ours)
    tensors = {
        "f64": torch.randn(2, 3, dtype=torch.float64),
        "f16": torch.randn(5, dtype=torch.float16),
        "bf16": torch.randn(3, 1, dtype=torch.bfloat16),
        "i64": torch.arange(7),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([250], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
    }
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    back = load_safetensors(tmp_path / "m.safetensors")
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)


def test_shards_and_pytorch_bin_give_the_same_state(saved, tmp_path):
    path, hf = saved
    hf.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    one, sharded = load_state_dir(path), load_state_dir(tmp_path / "shards")
    assert one.keys() == sharded.keys() and all(torch.equal(one[k], sharded[k]) for k in one)
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    from_bin = load_state_dir(tmp_path / "bin")
    assert all(torch.equal(from_bin[k], one[k]) for k in one)


def test_damaged_files_are_one_clear_line(saved, tmp_path):
    data = (saved[0] / "model.safetensors").read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "not a safetensors file": b"\x01\x02",
        "header length says": (10**9).to_bytes(8, "little") + b"{}",
        "header is not JSON": (4).to_bytes(8, "little") + b"\xff\xfe{]",
    }
    for message, content in cases.items():
        (tmp_path / "x.safetensors").write_bytes(content)
        with pytest.raises(ValueError, match=message):
            load_safetensors(tmp_path / "x.safetensors")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}})
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    with pytest.raises(ValueError, match=r"needs 16 bytes, its data_offsets \[0, 8\) hold 8"):
        load_safetensors(tmp_path / "x.safetensors")
    header = json.dumps({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}})
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    with pytest.raises(ValueError, match="expected a dtype among"):
        load_safetensors(tmp_path / "x.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not a PyTorch weights file"):
        load_state_dir(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights: expected one of"):
        load_state_dir(tmp_path)


def test_logits_equal_transformers(saved):
    path, hf = saved
    model, tokenizer = load_pretrained(path)
    assert not model.training and tokenizer.vocab_size == model.config.vocab_size
    idx = torch.randint(
        0, model.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_greedy_generation_equals_transformers(saved, tokenizer):
    path, hf = saved
    model, _ = load_pretrained(path)
    prompt = torch.tensor([tokenizer.encode("import os\nfor name in")])
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 16, top_k=1), ref)


def test_older_config_json_and_names_without_prefix(tmp_path, tokenizer):
    hf = hf_gpt2(tokenizer.vocab_size)
    raw = {"model_type": "gpt2", "vocab_size": tokenizer.vocab_size, "n_positions": 32,
           "n_layer": 2, "n_head": 2, "n_embd": 16}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(raw))
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    state.pop("lm_head.weight")  # tied, as in the original GPT-2 files
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    config = read_hf_config(tmp_path)
    assert config == GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2,
                               n_head=2, n_embd=16)  # fmt: skip
    model = load_hf_model(tmp_path).eval()
    idx = torch.randint(0, tokenizer.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_llama_config_before_transformers_5(tmp_path):
    raw = {"model_type": "llama", "vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 4, "intermediate_size": 24, "rope_theta": 500.0,
           "max_position_embeddings": 32}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = read_hf_config(tmp_path)
    assert (config.n_kv_head, config.rope_theta, config.pos, config.tie_weights) == (
        4, 500.0, "rope", False)  # fmt: skip
    raw["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="only default RoPE"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert': expected gpt2 or llama"):
        read_hf_config(tmp_path)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    path, _ = saved
    for name in ("model.safetensors", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    raw = json.loads((path / "config.json").read_text())
    raw["n_layer" if "n_layer" in raw else "num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="do not fit its config.json: missing"):
        load_pretrained(tmp_path)


def texts():
    rng = random.Random(0)
    corpus = default_corpus()
    alphabet = "aé ü\n\t  ßπ中文🙂'sll've\r\n123 4567.,;:!?()" + "\u00a0\u2028\x00\x7f"
    yield from ["", " ", "   \n\n\t  x  ", "Hello, world! It's 2024.", "x" * 300, "🙂🙂 a"]
    yield from [f"text{SPECIAL}more {SPECIAL} ", "def f(x):\n    return x ** 2  # sq\n"]
    for _ in range(20):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
    for _ in range(5):
        start = rng.randrange(len(corpus) - 3000)
        yield corpus[start : start + 3000]


def test_files_written_here_give_transformers_ids(tokenizer, tmp_path):
    save_gpt2_tokenizer(tokenizer, tmp_path)
    back = load_hf_tokenizer(tmp_path)
    assert back.merges == tokenizer.merges and back.special_tokens == tokenizer.special_tokens
    hf = GPT2Tokenizer.from_pretrained(tmp_path)
    for text in texts():
        ids = back.encode(text, allowed_special="all")
        assert ids == tokenizer.encode(text, allowed_special="all")
        assert ids == hf(text)["input_ids"], text
        assert hf.decode(ids) == back.decode(ids)
    hf.save_pretrained(tmp_path / "json")  # tokenizer.json only
    from_json = read_hf_tokenizer_json(tmp_path / "json" / "tokenizer.json")
    assert from_json.merges == tokenizer.merges and from_json.pattern == "gpt2"
    assert load_hf_tokenizer(tmp_path / "json").special_tokens == {SPECIAL: 399}


def test_real_gpt2_files_equal_tiktoken(shared_data):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab, merges = shared_data("gpt2/vocab.json"), shared_data("gpt2/merges.txt")
    gpt2 = read_gpt2_tokenizer(vocab, merges)
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {SPECIAL: 50256}
    ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab))
    from mlscratch.llm.bpe import PATTERNS

    enc = tiktoken.Encoding("gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=ranks,
                            special_tokens={SPECIAL: 50256})  # fmt: skip
    for text in texts():
        assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def test_tokenizer_files_refused_with_a_reason(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="train it with pattern='gpt2'"):
        save_gpt2_tokenizer(BPETokenizer.train("some text here " * 20, 260), tmp_path)
    save_gpt2_tokenizer(tokenizer, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    a, b = list(vocab)[300], list(vocab)[301]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="only ids in merge order"):
        load_hf_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models, pre_tokenizers

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "wp").mkdir()
    wordpiece.save(str(tmp_path / "wp" / "tokenizer.json"))
    with pytest.raises(
        ValueError, match="holds a WordPiece model with the pre-tokenizer Whitespace"
    ):
        load_hf_tokenizer(tmp_path / "wp")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_hf_tokenizer(tmp_path / "wp" / "..nothing")


def test_run_of_ours_and_bad_sources(tmp_path, tokenizer, saved):
    config = TrainConfig(out_dir=str(tmp_path / "run"), max_iters=2, eval_interval=2,
                         eval_iters=1, batch_size=2, block_size=16, n_layer=1, n_head=2,
                         n_embd=16, data=None, tokenizer="byte")  # fmt: skip
    train(config, progress=False)
    model, tok = load_pretrained(config.out_dir)
    assert model.config.n_layer == 1 and tok.vocab_size == 256
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither a run of ours"):
        load_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_pretrained(str(tmp_path / "missing" / "dir"))
    path, _ = saved
    small = BPETokenizer.train("some text here " * 20, 300, pattern="gpt2")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "mixed" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "mixed" / name).write_bytes((path / name).read_bytes())
    save_gpt2_tokenizer(small, tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"has \d+ tokens, the model 400"):
        load_pretrained(tmp_path / "mixed")


def test_merges_of_tokens_that_start_with_a_hash(tmp_path):
    tokenizer = BPETokenizer.train("##.##,###;\n" * 50, 270, pattern="gpt2")
    assert any(tokenizer.vocab[a].startswith(b"#") for a, _ in tokenizer.merges)
    save_gpt2_tokenizer(tokenizer, tmp_path)
    assert load_hf_tokenizer(tmp_path).merges == tokenizer.merges
    hf = GPT2Tokenizer.from_pretrained(tmp_path)
    assert hf("## #x ###,")["input_ids"] == tokenizer.encode("## #x ###,")
