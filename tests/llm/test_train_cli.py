"""`mlscratch train` and `mlscratch sample`: options, signals, kills, and one-line errors."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from mlscratch.checkpoint import save_checkpoint
from mlscratch.llm.run import CHECKPOINT, read_metrics
from mlscratch.llm.run import load_run_checkpoint as load_checkpoint
from mlscratch.llm.train_cli import main, sample_main
from mlscratch.llm.trainer import MODEL_FIELDS, TrainConfig

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind.\n" * 40
TINY = (
    "--n_layer 1 --n_head 2 --n_embd 16 --block_size 16 --batch_size 4 --eval_iters 2 "
    "--warmup_iters 1 --quiet"
).split()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def run_args(out_dir, text_file, *extra):
    return ["--out_dir", str(out_dir), "--data", text_file, *TINY, *extra]


def snapshot(directory):
    """Every file under directory and its bytes (to prove nothing was overwritten)."""
    directory = Path(directory)
    if not directory.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def fails(command, argv, capsys, match, status=1, prog="mlscratch train"):
    assert command(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert match in err, err


def test_train_then_sample(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(run_args(out, text_file, "--max_iters", "4", "--eval_interval", "2")) == 0
    assert "iter 4: val loss" in capsys.readouterr().out
    assert load_checkpoint(out / CHECKPOINT)["iter"] == 4
    assert [r["iter"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r] == [0, 2, 4]
    argv = [
        "--out_dir",
        str(out),
        "--prompt",
        "To be",
        "--max_new_tokens",
        "30",
        "--num_samples",
        "2",
        "--seed",
        "7",
        "--top_k",
        "5",
        "--top_p",
        "0.9",
    ]
    assert sample_main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("To be") and first.count("---------------") == 1
    assert sample_main(argv) == 0
    assert capsys.readouterr().out == first  # seeded
    # resume continues from the saved settings; options given override them
    assert main(["--out_dir", str(out), "--resume", "--max_iters", "6", "--quiet"]) == 0
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["iter"] == 6 and ckpt["config"]["max_iters"] == 6
    assert ckpt["config"]["n_embd"] == 16 and ckpt["config"]["data"] == text_file


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(TrainConfig):
        assert f"--{f.name} " in text
    assert "--resume" in text and "context length T" in text
    model, training = text.split("the model (the fields of GPTConfig)")[1].split("training:")
    assert all(f"--{name} " in model for name in MODEL_FIELDS)
    assert "--learning_rate " in training and "--learning_rate " not in model


def test_a_run_of_an_older_format_fails_in_one_line_naming_the_format(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(run_args(out, text_file, "--max_iters", "1", "--eval_interval", "1")) == 0
    capsys.readouterr()
    old = {k: v for k, v in load_checkpoint(out / CHECKPOINT).items() if k != "format"}
    save_checkpoint({**old, "version": 1}, out / CHECKPOINT, "mlscratch-train-checkpoint")
    before = snapshot(out)
    for command, prog in ((main, "mlscratch train"), (sample_main, "mlscratch sample")):
        fails(
            command,
            ["--out_dir", str(out), "--resume"][: 3 if command is main else 2],
            capsys,
            "is a mlscratch-train-checkpoint file; this version of mlscratch reads "
            "mlscratch-gpt-run-checkpoint-v2",
            prog=prog,
        )
    assert snapshot(out) == before


def test_bad_input_is_one_line_a_non_zero_exit_and_overwrites_nothing(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(run_args(out, text_file, "--max_iters", "2", "--eval_interval", "2")) == 0
    capsys.readouterr()
    before = snapshot(out)
    bad, empty, short = tmp_path / "bad.txt", tmp_path / "empty.txt", tmp_path / "short.txt"
    bad.write_bytes(b"caf\xe9 au lait" * 100)
    empty.write_bytes(b"")
    short.write_text("hello world\n")
    fresh = tmp_path / "fresh"
    cases = [
        (run_args(fresh, str(tmp_path / "missing.txt")), "No such file or directory", 1),
        (run_args(fresh, str(empty)), "is empty", 1),
        (run_args(fresh, str(bad)), "not UTF-8 text: invalid byte at offset 3", 1),
        (run_args(fresh, str(short)), "the corpus is too short", 1),
        (run_args(fresh, text_file, "--learning_rate", "-0.1"), "learning_rate must be > 0", 1),
        (run_args(fresh, text_file, "--block_size", "0"), "block_size must be at least 1", 1),
        (run_args(fresh, text_file, "--tokenizer", "words"), "tokenizer must be one of", 1),
        (run_args(fresh, text_file, "--max_iters", "ten"), "invalid int value: 'ten'", 2),
        (run_args(fresh, text_file, "--bias", "maybe"), "expected true or false", 2),
        (run_args(fresh, text_file, "--lr", "0.1"), "unrecognized arguments: --lr", 2),
        (run_args(out, text_file), "already holds a run: pass --resume", 1),
        (
            ["--out_dir", str(out), "--resume", "--n_layer", "2"],
            "was trained with n_layer=1, this run asks for n_layer=2",
            1,
        ),
        (
            ["--out_dir", str(out), "--resume", "--learning_rate", "0"],
            "learning_rate must be > 0",
            1,
        ),
        (["--out_dir", str(fresh), "--resume"], "nothing to resume", 1),
    ]
    if not torch.cuda.is_available():
        cases.append((run_args(fresh, text_file, "--device", "cuda"), "CUDA is not available", 1))
    for argv, match, status in cases:
        fails(main, argv, capsys, match, status)
        assert snapshot(out) == before and snapshot(fresh) is None, argv
    (out / CHECKPOINT).write_bytes(before[CHECKPOINT][: len(before[CHECKPOINT]) // 2])
    corrupt = snapshot(out)
    fails(main, ["--out_dir", str(out), "--resume"], capsys, "not a readable checkpoint")
    fails(
        sample_main,
        ["--out_dir", str(out)],
        capsys,
        "not a readable checkpoint",
        prog="mlscratch sample",
    )
    assert snapshot(out) == corrupt


def test_an_out_dir_that_cannot_be_written_is_an_error(tmp_path, text_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    fails(main, run_args(blocker / "run", text_file), capsys, "Not a directory")
    assert blocker.read_text() == "not a directory"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        fails(main, run_args(locked, text_file), capsys, "Permission denied")
        assert list(locked.iterdir()) == []


def test_sample_errors(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    fails(
        sample_main,
        ["--out_dir", str(out)],
        capsys,
        "there is no checkpoint",
        prog="mlscratch sample",
    )
    assert main(run_args(out, text_file, "--max_iters", "1", "--eval_interval", "1")) == 0
    capsys.readouterr()
    for argv, match in [
        (["--temperature", "0"], "temperature must be > 0"),
        (["--top_p", "1.5"], "top_p must be in (0, 1]"),
        (["--num_samples", "0"], "num_samples must be at least 1"),
        (["--prompt", "Ω"], "is not in the vocabulary"),
    ]:
        fails(sample_main, ["--out_dir", str(out), *argv], capsys, match, prog="mlscratch sample")


def test_a_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    argv = run_args(
        out,
        text_file,
        "--max_iters",
        "30",
        "--eval_interval",
        "100",
        "--log_interval",
        "1",
        "--learning_rate",
        "1e30",
        "--grad_clip",
        "0",
        "--decay_lr",
        "false",
    )
    fails(main, argv, capsys, "training diverged")
    assert load_checkpoint(out / CHECKPOINT)["iter"] == 0


def start(args, env, driver=None):
    code = driver or "import sys; from mlscratch.__main__ import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, text_file, sig, child_env):
    out = tmp_path / "run"
    proc = start(
        ["train", *run_args(out, text_file, "--max_iters", "100000", "--eval_interval", "1000")],
        child_env,
    )
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(read_metrics(metrics)) >= 3, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert f"stopped by {sig.name}" in stderr and "--resume" in stderr
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert 0 < ckpt["iter"] < 1000 and ckpt["metrics_bytes"] == metrics.stat().st_size
    stop = str(ckpt["iter"] + 2)
    assert main(["--out_dir", str(out), "--resume", "--max_iters", stop, "--quiet"]) == 0
    assert load_checkpoint(out / CHECKPOINT)["iter"] == ckpt["iter"] + 2


SLOW_RENAME = """
import os, sys, time
from mlscratch.__main__ import main
replace = os.replace
def slow_replace(src, dst):
    if str(dst).endswith("ckpt.pt") and os.path.exists(dst):  # the second checkpoint
        print("WRITTEN", src, file=sys.stderr, flush=True)
        time.sleep(120)
    replace(src, dst)
os.replace = slow_replace
sys.exit(main())
"""


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, text_file, child_env):
    out = tmp_path / "run"
    proc = start(
        ["train", *run_args(out, text_file, "--max_iters", "8", "--eval_interval", "4")],
        child_env,
        driver=SLOW_RENAME,
    )
    wait_for(lambda: list(out.glob(f"{CHECKPOINT}.*.tmp")) and (out / CHECKPOINT).exists(), proc)
    line = proc.stderr.readline()
    assert line.startswith("WRITTEN"), line
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert list(out.glob(f"{CHECKPOINT}.*.tmp"))  # the new checkpoint, complete but not renamed
    assert load_checkpoint(out / CHECKPOINT)["iter"] == 0  # the previous one, intact
    assert main(["--out_dir", str(out), "--resume", "--quiet"]) == 0
    assert load_checkpoint(out / CHECKPOINT)["iter"] == 8
    assert not list(out.glob("*.tmp"))
    evals = [r["iter"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert evals == [0, 4, 8]


def test_the_dispatcher_runs_sample(tmp_path, text_file, capsys, child_env):
    # the signal tests above run `train` through the dispatcher
    out = tmp_path / "run"
    assert main(run_args(out, text_file, "--max_iters", "1", "--eval_interval", "1")) == 0
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlscratch",
            "sample",
            "--out_dir",
            str(out),
            "--prompt",
            "To",
            "--max_new_tokens",
            "5",
        ],
        env=child_env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stdout.startswith("To"), run.stderr
    assert len(run.stdout) == len("To") + 5 + 1  # 5 characters and a newline
