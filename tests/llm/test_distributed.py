"""Data parallel training: two CPU processes (gloo, torchrun) equal one with the same batch."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlscratch.llm.distributed import DistInfo, dist_info
from mlscratch.llm.run import CHECKPOINT, read_metrics
from mlscratch.llm.run import load_run_checkpoint as load_checkpoint
from mlscratch.llm.train import TrainConfig, train

TEXT = "Two processes, one batch: the gradients are averaged, the steps are the same.\n" * 40
# Each process draws its own micro-batches from the step's offsets, and DDP divides every
# gradient by the world size before summing, so on a CPU the losses come out equal to the
# last bit. The tolerance allows for a different order of summation (other backends,
# more processes), which changes the last bits of float32.
RTOL = 1e-6


def torchrun(out_dir, args, env, **popen):
    """`torchrun --nproc_per_node=2 -m mlscratch train` on CPU (Popen when given popen options)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mlscratch",
        "train",
        "--out_dir",
        str(out_dir),
        *args,
    ]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def tiny_run(tmp_path, *extra):
    """Options of a tiny run on TEXT with 2 micro-batches per step (TEXT written to tmp_path)."""
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    return [
        *("--data", str(data), "--quiet"),
        *"--n_layer 1 --n_head 2 --n_embd 16 --block_size 16 --batch_size 4".split(),
        *"--warmup_iters 1 --log_interval 1 --gradient_accumulation_steps 2".split(),
        *extra,
    ]


def test_dist_info_reads_torchruns_environment():
    assert dist_info({}) == DistInfo(0, 0, 1)
    info = dist_info({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert info == DistInfo(3, 1, 4) and info.enabled and not info.is_main
    with pytest.raises(ValueError, match="RANK must be an integer"):
        dist_info({"RANK": "zero"})
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        dist_info({"RANK": "2", "WORLD_SIZE": "2"})


def test_accumulation_steps_must_split_evenly_between_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match=r"must be a multiple of the number of processes \(2\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(tmp_path, child_env):
    args = tiny_run(tmp_path, "--eval_iters", "4", "--max_iters", "6", "--eval_interval", "3")
    two = torchrun(tmp_path / "two", args, child_env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("iter 6: val loss") == 1  # rank 0 alone reports
    one = subprocess.run(
        [sys.executable, "-m", "mlscratch", "train", "--out_dir", str(tmp_path / "one"), *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a = read_metrics(tmp_path / "two" / "metrics.jsonl")
    b = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [(r["iter"], sorted(r)) for r in a] == [(r["iter"], sorted(r)) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=RTOL), (ra, rb)
    ckpt = load_checkpoint(tmp_path / "two" / CHECKPOINT)
    assert ckpt["iter"] == 6 and len(ckpt["rng"]["processes"]) == 2  # one state per process
    assert len(load_checkpoint(tmp_path / "one" / CHECKPOINT)["rng"]["processes"]) == 1
    assert not list((tmp_path / "two").glob("*.tmp"))


def without_timings(out_dir):
    return [
        {k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}
        for r in read_metrics(Path(out_dir) / "metrics.jsonl")
    ]


def test_a_resumed_two_process_run_with_dropout_equals_an_uninterrupted_one(tmp_path, child_env):
    # lr_decay_iters fixed: the schedule must not depend on where a run stops
    args = tiny_run(
        tmp_path,
        "--eval_iters",
        "4",
        "--lr_decay_iters",
        "8",
        "--eval_interval",
        "4",
        "--dropout",
        "0.2",
    )
    whole = torchrun(tmp_path / "whole", [*args, "--max_iters", "8"], child_env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = torchrun(
        tmp_path / "parts", [*args, "--max_iters", "3"], child_env
    )  # stops between evals
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(tmp_path / "parts" / CHECKPOINT)["iter"] == 3
    rest = torchrun(tmp_path / "parts", [*args, "--max_iters", "8", "--resume"], child_env)
    assert rest.returncode == 0, rest.stderr[-3000:]
    parts, uninterrupted = without_timings(tmp_path / "parts"), without_timings(tmp_path / "whole")
    # the stopped run evaluated at its last iter (3), the whole run did not
    assert [r for r in parts if r["iter"] != 3 or "loss" in r] == uninterrupted  # exact
    a = load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "parts" / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # each process's dropout stream was saved and restored: the two differ
    states = b["rng"]["processes"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])


def test_ctrl_c_under_torchrun_saves_one_checkpoint_that_resumes(tmp_path, child_env):
    args = tiny_run(tmp_path, "--eval_iters", "2", "--eval_interval", "100000")
    out = tmp_path / "run"
    # a process group of its own, as a terminal's foreground job: Ctrl-C signals all of it
    proc = torchrun(
        out,
        [*args, "--max_iters", "1000000"],
        child_env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(read_metrics(metrics)) >= 5):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    # torchrun itself reports the signal with a non-zero status; the workers stop cleanly
    assert stderr.count("stopped by SIGINT") == 1 and "--resume" in stderr, stderr[-3000:]
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["iter"] >= 5 and ckpt["metrics_bytes"] == metrics.stat().st_size
    assert len(ckpt["rng"]["processes"]) == 2
    stop = ckpt["iter"] + 2
    rest = torchrun(out, [*args, "--max_iters", str(stop), "--resume"], child_env)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert load_checkpoint(out / CHECKPOINT)["iter"] == stop
    assert [r["iter"] for r in read_metrics(metrics)][-2:] == [stop - 1, stop]
