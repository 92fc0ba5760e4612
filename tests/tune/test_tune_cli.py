"""`mlscratch train` and `mlscratch sample` with --init_from (chapter "Starting from pretrained
weights"): greedy samples equal transformers', fine-tuning starts from the weights, bad input."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mlscratch.llm.data import load_split
from mlscratch.llm.run import read_metrics
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.llm.trainer import estimate_loss
from mlscratch.text.corpus import default_corpus
from mlscratch.tune import cli
from mlscratch.tune.pretrained import load_pretrained, save_gpt2_tokenizer

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def tokenizer():
    text = default_corpus()[:150_000]
    return BPETokenizer.train(text, 400, pattern="gpt2", special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def saved(request, tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = GPT2Config(vocab_size=400, n_positions=64, n_layer=2, n_head=2, n_embd=16)
        hf = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=400, max_position_embeddings=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, hidden_size=16,
                          intermediate_size=24)  # fmt: skip
        hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(20.0)  # confident predictions: no near-ties in greedy decoding
    path = tmp_path_factory.mktemp(request.param)
    hf.eval().save_pretrained(path)
    save_gpt2_tokenizer(tokenizer, path)
    return path, hf


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(default_corpus()[-30_000:], encoding="utf-8")
    return path


def test_greedy_sample_equals_transformers_generate(saved, tokenizer, capsys):
    path, hf = saved
    prompt = "import sys\ndef main"
    status = cli.sample_main(["--init_from", str(path), "--prompt", prompt, "--top_k", "1",
                              "--max_new_tokens", "20"])  # fmt: skip
    out = capsys.readouterr().out
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert status == 0 and out == tokenizer.decode(ref[0].tolist()) + "\n"


def test_train_init_from_starts_from_the_weights(saved, text_file, tmp_path, capsys):
    path, _ = saved
    out_dir = tmp_path / "tuned"
    argv = ["--init_from", str(path), "--data", str(text_file), "--out_dir", str(out_dir),
            "--max_iters", "4", "--eval_interval", "4", "--eval_iters", "2", "--batch_size", "4",
            "--block_size", "24", "--quiet", "--dropout", "0.0"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    first = read_metrics(out_dir / "metrics.jsonl")[0]
    assert first["iter"] == 0
    model, _ = load_pretrained(path)
    splits = {name: load_split(out_dir / f"{name}.bin") for name in ("train", "val")}
    again = estimate_loss(model, splits, 24, 4, 2, seed=1337)
    assert first["val_loss"] == pytest.approx(again["val"], abs=1e-6)
    assert first["train_loss"] == pytest.approx(again["train"], abs=1e-6)
    tuned, tok = load_pretrained(out_dir)  # an ordinary run of ours now
    assert tuned.config.block_size == 24 and tok.vocab_size == 400
    assert tuned.config.n_layer == model.config.n_layer and tuned.config.pos == model.config.pos
    resumed = ["--out_dir", str(out_dir), "--resume", "--max_iters", "6", "--quiet"]
    assert cli.main(resumed) == 0, capsys.readouterr().err


def fails(main, argv, capsys, message, status=1):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bad_input_is_one_line_and_writes_nothing(saved, text_file, tmp_path, capsys):
    path, _ = saved
    out_dir = tmp_path / "run"
    ok = ["--init_from", str(path), "--data", str(text_file), "--out_dir", str(out_dir),
          "--max_iters", "1", "--eval_interval", "1", "--eval_iters", "1", "--batch_size", "2",
          "--quiet"]  # fmt: skip
    assert cli.main(ok) == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    other = tmp_path / "other"
    base = ["--init_from", str(path), "--data", str(text_file), "--out_dir"]
    fails(cli.main, [*base, str(other), "--n_layer", "5"], capsys, "--n_layer 5 contradicts")
    fails(cli.main, [*base, str(other), "--block_size", "65"], capsys, "may only shorten")
    fails(cli.main, [*base, str(other), "--tokenizer", "char"], capsys, "--tokenizer contradicts")
    fails(cli.main, [*base, str(out_dir), "--resume"], capsys, "give one")
    fails(cli.main, [*base, str(out_dir)], capsys, "already holds a run")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes((path / "config.json").read_bytes())
    fails(cli.main, ["--init_from", str(empty), "--out_dir", str(out_dir)], capsys,
          "holds no weights")  # fmt: skip
    for name in ("model.safetensors", "vocab.json", "merges.txt"):
        (empty / name).write_bytes((path / name).read_bytes())
    raw = json.loads((path / "config.json").read_text())
    raw["vocab_size"] = 500
    (empty / "config.json").write_text(json.dumps(raw))
    fails(cli.main, ["--init_from", str(empty), "--out_dir", str(out_dir)], capsys,
          "do not fit its config.json")  # fmt: skip
    raw["vocab_size"] = 400
    (empty / "config.json").write_text(json.dumps(raw))
    save_gpt2_tokenizer(BPETokenizer.train(default_corpus()[:20_000], 300, pattern="gpt2"), empty)
    fails(cli.main, ["--init_from", str(empty), "--out_dir", str(out_dir)], capsys,
          "has 300 tokens, the model 400")  # fmt: skip
    fails(cli.sample_main, ["--init_from", str(path), "--prompt", default_corpus()[:3000]],
          capsys, "longer than the context")  # fmt: skip
    fails(cli.sample_main, ["--init_from", str(path), "--out_dir", str(out_dir)], capsys,
          "give one")  # fmt: skip
    fails(cli.sample_main, ["--init_from", str(tmp_path / "nowhere" / "x")], capsys,
          "is not a directory")  # fmt: skip
    assert not other.exists()
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_the_commands_route_to_init_from_and_hub_names_fail_offline(child_env, tmp_path):
    run = [sys.executable, "-m", "mlscratch"]
    help_ = subprocess.run([*run, "train", "--help"], capture_output=True, text=True, env=child_env)
    assert help_.returncode == 0 and "--init_from" in help_.stdout and "--n_layer" in help_.stdout
    env = {**child_env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    hub = subprocess.run([*run, "sample", "--init_from", "no-such-org/no-such-model"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert hub.returncode == 1 and hub.stderr.count("\n") == 1, hub.stderr
    assert "could not load it from the hub (offline, or no such model)" in hub.stderr
