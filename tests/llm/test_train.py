"""The training loop: exact resume, checkpoints, signals, divergence, sampling."""

import math
import signal
from dataclasses import fields

import pytest
import torch

from mlscratch.llm import trainer as trainer_module
from mlscratch.llm.data import encode_splits, load_split, load_tokenizer, make_tokenizer
from mlscratch.llm.gpt import GPTConfig
from mlscratch.llm.run import CHECKPOINT, FIXED_ON_RESUME, check_resumable, read_metrics
from mlscratch.llm.run import load_run_checkpoint as load_checkpoint
from mlscratch.llm.sample import load_model, sample
from mlscratch.llm.train import TrainConfig, train
from mlscratch.llm.trainer import (
    Trainer,
    TrainingDiverged,
    estimate_loss,
    split_loss,
    train_loop,
)

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness. Größe, naïve café: 🙂\n"
) * 30
TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=16,
    block_size=16,
    batch_size=4,
    eval_iters=2,
    warmup_iters=2,
    learning_rate=3e-3,
)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def config(tmp_path, text_file, name="run", **options):
    return TrainConfig(out_dir=str(tmp_path / name), data=text_file, **{**TINY, **options})


def losses(out_dir):
    """The metrics without the timing fields, which differ from run to run."""
    return [
        {k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}
        for r in read_metrics(f"{out_dir}/metrics.jsonl")
    ]


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(learning_rate=-1e-3), "learning_rate must be > 0"),
        (dict(block_size=0), "block_size must be at least 1"),
        (dict(max_iters=-1), "max_iters must be at least 0"),
        (dict(dropout=1.5), "dropout must be in"),
        (dict(beta2=1.0), "beta2 must be in"),
        (dict(n_embd=30, n_head=4), "divisible by n_head"),
        (dict(tokenizer="words"), "tokenizer must be one of"),
        (dict(tokenizer="bpe", vocab_size=100), "at least 256"),
        (dict(dtype="float16"), "dtype must be"),
        (dict(device="tpu"), "device must be"),
        (dict(warmup_iters=50, lr_decay_iters=20), r"warmup_iters \(50\) must be smaller"),
        (dict(min_lr=1.0), "min_lr must be in"),
        (dict(learning_rate=float("nan")), "finite"),
    ],
)
def test_config_rejects_values_out_of_range(bad, error):
    with pytest.raises(ValueError, match=error):
        TrainConfig(**bad)


def test_the_model_settings_are_gptconfigs_fields():
    names = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]
    assert set(names) <= {f.name for f in fields(TrainConfig)}
    # every model setting reaches the model: set each to a value other than the default
    changed = dict(
        block_size=32,
        n_layer=2,
        n_head=4,
        n_embd=64,
        dropout=0.25,
        bias=False,
        n_kv_head=2,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        gelu="exact",
        tie_weights=False,
        n_hidden=96,
        rope_theta=500.0,
        norm_eps=1e-6,
        fused=True,
        hand_backward=True,
    )
    assert set(changed) == set(names), "a new GPTConfig field: give it a value here"
    assert TrainConfig(**changed).model_config(100) == GPTConfig(vocab_size=100, **changed)
    assert TrainConfig().model_config(65).n_layer == 4  # the CPU defaults, not GPT-2 small's
    fixed = set(FIXED_ON_RESUME)
    same_model = {"dropout", "fused", "hand_backward"}  # may change when a run resumes
    assert fixed == set(names) - same_model | {"data", "tokenizer", "vocab_size"}


def test_the_decay_defaults_to_max_iters_but_outlasts_the_warmup():
    assert TrainConfig(max_iters=500, warmup_iters=10).decay_iters == 500
    assert TrainConfig(max_iters=5, warmup_iters=10).decay_iters == 11
    assert TrainConfig(max_iters=5, warmup_iters=10, lr_decay_iters=30).decay_iters == 30


def test_config_rejects_wrong_types():
    with pytest.raises(TypeError, match="batch_size must be a int"):
        TrainConfig(batch_size="12")
    with pytest.raises(TypeError, match="bias must be a bool"):
        TrainConfig(bias=1)
    assert TrainConfig(learning_rate=1).learning_rate == 1.0  # an int is a fine float


def test_training_writes_metrics_checkpoint_plot_and_learns(tmp_path, text_file):
    cfg = config(
        tmp_path,
        text_file,
        max_iters=30,
        eval_interval=10,
        log_interval=5,
        gradient_accumulation_steps=2,
    )
    result = train(cfg, progress=False)
    out = tmp_path / "run"
    records = read_metrics(out / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 10, 20, 30]
    assert [r["iter"] for r in steps] == [0, 5, 10, 15, 20, 25]
    assert all(set(r) == {"iter", "loss", "lr", "tokens_per_s", "elapsed_s"} for r in steps)
    assert all(set(r) == {"iter", "train_loss", "val_loss", "lr", "elapsed_s"} for r in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # it learns the repeated text
    assert result["iter"] == 30 and result["val_loss"] == evals[-1]["val_loss"]
    assert result["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert result["tokens_per_s"] > 0 and result["interrupted"] is None
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["iter"] == 30 and ckpt["config"]["max_iters"] == 30
    assert ckpt["metrics_bytes"] == (out / "metrics.jsonl").stat().st_size
    assert not list(out.glob("*.tmp"))


def test_the_core_loop_in_memory_computes_what_a_run_writes(tmp_path, text_file):
    options = dict(
        max_iters=8, eval_interval=4, log_interval=1, dropout=0.1, gradient_accumulation_steps=2
    )
    cfg = config(tmp_path, text_file, **options)
    train(cfg, progress=False)
    tokenizer = make_tokenizer("char", TEXT)
    trainer = train_loop(Trainer(cfg, encode_splits(TEXT, tokenizer), tokenizer.vocab_size))
    timings = ("elapsed_s", "tokens_per_s")
    history = [{k: v for k, v in r.items() if k not in timings} for r in trainer.history]
    assert history == losses(tmp_path / "run")  # exact: a run adds files, not arithmetic
    assert trainer.it == 8 and trainer.best_val_loss == min(
        r["val_loss"] for r in history if "val_loss" in r
    )


def interrupt_at(monkeypatch, at):
    """Send this process a real SIGINT while iteration `at` starts."""
    schedule = trainer_module.lr_schedule

    def raising(it, *args):
        if it == at:
            signal.raise_signal(signal.SIGINT)
        return schedule(it, *args)

    monkeypatch.setattr(trainer_module, "lr_schedule", raising)


@pytest.mark.parametrize("stop", [3, 6])  # stops at an evaluation point (4) and between
def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path, text_file, monkeypatch, stop
):
    options = dict(
        max_iters=12, eval_interval=4, log_interval=1, dropout=0.1, gradient_accumulation_steps=2
    )
    whole = train(config(tmp_path, text_file, "whole", **options), progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop)
        first = train(config(tmp_path, text_file, "parts", **options), progress=False)
    assert first["interrupted"] == "SIGINT" and first["iter"] == stop + 1
    assert load_checkpoint(tmp_path / "parts" / CHECKPOINT)["iter"] == stop + 1
    rest = train(config(tmp_path, text_file, "parts", **options), resume=True, progress=False)
    assert rest["iter"] == 12 and rest["val_loss"] == whole["val_loss"]
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")  # exact, every line
    a = load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "parts" / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path, text_file):
    # lr_decay_iters fixed, so that the schedule does not depend on max_iters
    options = dict(max_iters=8, eval_interval=4, log_interval=1, lr_decay_iters=8)
    out = tmp_path / "parts"
    train(config(tmp_path, text_file, "parts", **{**options, "max_iters": 4}), progress=False)
    with open(out / "metrics.jsonl", "a") as f:  # as if a killed run had logged on
        f.write('{"iter": 4, "loss": 123.0}\n')
    train(config(tmp_path, text_file, "parts", **options), resume=True, progress=False)
    train(config(tmp_path, text_file, "whole", **options), progress=False)
    assert losses(out) == losses(tmp_path / "whole")


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, text_file):
    cfg = config(
        tmp_path,
        text_file,
        max_iters=20,
        eval_interval=100,
        log_interval=1,
        learning_rate=1e30,
        grad_clip=0.0,
        decay_lr=False,
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"is (nan|inf|-inf) at iter \d+: training "
        r"diverged",
    ):
        train(cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert ckpt["iter"] == 0
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_estimate_loss_averages_the_same_batches_every_time(tmp_path, text_file):
    train(config(tmp_path, text_file, max_iters=2, eval_interval=2), progress=False)
    model, _, _ = load_model(tmp_path / "run")
    splits = {"val": load_split(tmp_path / "run" / "val.bin")}
    got = estimate_loss(model, splits, 16, 3, eval_iters=4, seed=5)
    generator = torch.Generator().manual_seed(5)
    offsets = torch.randint(len(splits["val"]) - 16, (4, 3), generator=generator)
    expected = []
    with torch.no_grad():
        for row in offsets:
            x = torch.stack(
                [torch.from_numpy(splits["val"][i : i + 16].astype("int64")) for i in row.tolist()]
            )
            y = torch.stack(
                [
                    torch.from_numpy(splits["val"][i + 1 : i + 17].astype("int64"))
                    for i in row.tolist()
                ]
            )
            logits, _ = model(x)
            ref = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
            )
            expected.append(ref.item())
    assert got["val"] == pytest.approx(sum(expected) / 4, rel=1e-6)
    assert estimate_loss(model, splits, 16, 3, eval_iters=4, seed=5) == got


@pytest.mark.parametrize("batch_size", [1, 4, 1000])
def test_split_loss_predicts_every_token_of_whole_windows_once(tmp_path, text_file, batch_size):
    train(config(tmp_path, text_file, max_iters=2, eval_interval=2), progress=False)
    model, _, _ = load_model(tmp_path / "run")
    data = load_split(tmp_path / "run" / "val.bin")
    n = (len(data) - 1) // 16
    ids = torch.from_numpy(data[: n * 16 + 1].astype("int64"))
    x, y = ids[:-1].view(n, 16), ids[1:].view(n, 16)  # the windows, one after another
    with torch.no_grad():
        logits, _ = model(x)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
    ) / (n * 16)
    model.train()  # split_loss evaluates in evaluation mode and restores the mode after
    assert split_loss(model, data, 16, batch_size) == pytest.approx(expected.item(), rel=1e-6)
    assert model.training
    with pytest.raises(ValueError, match="fewer than one window"):
        split_loss(model, data[:16], 16)


def test_bfloat16_autocast_trains_close_to_float32(tmp_path, text_file):
    a = train(config(tmp_path, text_file, "f32", max_iters=4, eval_interval=4), progress=False)
    b = train(
        config(tmp_path, text_file, "bf16", max_iters=4, eval_interval=4, dtype="bfloat16"),
        progress=False,
    )
    assert math.isfinite(b["val_loss"]) and abs(a["val_loss"] - b["val_loss"]) < 0.05


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_sampling_streams_the_text_that_generate_produces(tmp_path, text_file, kind):
    train(
        config(tmp_path, text_file, max_iters=3, eval_interval=3, tokenizer=kind, vocab_size=300),
        progress=False,
    )
    model, tok, ckpt = load_model(tmp_path / "run")
    assert ckpt["iter"] == 3 and type(tok) is type(load_tokenizer(tmp_path / "run"))
    pieces = list(sample(model, tok, "Größe", max_new_tokens=40, temperature=1.5, seed=3))
    ids = tok.encode("Größe")
    full = model.generate(torch.tensor([ids]), 40, temperature=1.5, seed=3)
    assert "".join(pieces) == tok.decode(full[0, len(ids) :].tolist())
    assert len(pieces) > 1
    again = "".join(sample(model, tok, "Größe", max_new_tokens=40, temperature=1.5, seed=3))
    assert again == "".join(pieces)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tok, "x", temperature=0.0)
    with pytest.raises(ValueError, match="prompt is empty"):
        sample(model, tok, "")


def test_load_model_rejects_a_checkpoint_of_another_shape(tmp_path, text_file):
    train(config(tmp_path, text_file, max_iters=1, eval_interval=1), progress=False)
    path = tmp_path / "run" / CHECKPOINT
    ckpt = load_checkpoint(path)
    ckpt["model_config"]["n_embd"] = 32
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_model(tmp_path / "run")


def test_the_progress_bar_shows_the_loss_and_tokens_per_second(tmp_path, text_file, capsys):
    train(config(tmp_path, text_file, max_iters=4, eval_interval=4, log_interval=2))
    err = capsys.readouterr().err
    assert "4/4" in err and "loss=" in err and "tok_s=" in err, err


def test_a_setting_the_checkpoint_predates_counts_as_its_default():
    """A checkpoint written before a model field existed resumes when the run keeps the
    field's default, and refuses a run that asks for another value."""
    saved = {k: v for k, v in vars(TrainConfig()).items() if k != "gelu"}
    check_resumable({"config": saved}, TrainConfig(), "ckpt.pt")
    check_resumable({"config": saved}, TrainConfig(hand_backward=True), "ckpt.pt")  # same model
    with pytest.raises(ValueError, match="was trained with gelu='tanh'"):
        check_resumable({"config": saved}, TrainConfig(gelu="exact"), "ckpt.pt")
