"""Data parallel training: two CPU processes (gloo, torchrun) equal one with the same batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlscratch.llm.distributed import DistInfo, dist_info
from mlscratch.llm.train import CHECKPOINT, TrainConfig, load_checkpoint, read_metrics, train

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Two processes, one batch: the gradients are averaged, the steps are the same.\n" * 40
# Each process draws its own micro-batches from the step's offsets, and DDP divides every
# gradient by the world size before summing, so on a CPU the losses come out equal to the
# last bit. The tolerance allows for a different order of summation (other backends,
# more processes), which changes the last bits of float32.
RTOL = 1e-6


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


def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    args = ["--data", str(data), "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
            "--block_size", "16", "--batch_size", "4", "--eval_iters", "4", "--warmup_iters",
            "1", "--max_iters", "6", "--eval_interval", "3", "--log_interval", "1",
            "--gradient_accumulation_steps", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "mlscratch", "train",
                          "--out_dir", str(tmp_path / "two"), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("iter 6: val loss") == 1  # rank 0 alone reports
    one = subprocess.run([sys.executable, "-m", "mlscratch", "train",
                          "--out_dir", str(tmp_path / "one"), *args],
                         env=env, capture_output=True, text=True, timeout=300)
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
