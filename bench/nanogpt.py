"""`mlscratch train` beside nanoGPT's own `train.py`, both running at once, one thread each.

nanoGPT's README CPU configuration on Tiny Shakespeare, character level (n_layer 4,
n_head 4, n_embd 128, block_size 64, batch_size 12, max_iters 2000, lr_decay_iters 2000,
dropout 0, bias off, no compile), with validation loss estimated on 200 batches every
250 iterations in both programs. For each seed the two programs start together, each
pinned to one thread; the script waits for both and records, per program: wall-clock
seconds, training tokens per second over the wall time, the final validation loss, the
peak resident memory of the process, and the model FLOP utilization: training FLOPs
per token (6 N + 12 L C T, the same model in both) times tokens per second, over the
float32 matmul peak of one thread measured in this process before each pair starts
(evaluations count in the wall time, so this is the MFU of the whole run). nanoGPT seeds
its generator with the constant 1337 + rank; a copy of its train.py with that constant
replaced by the seed runs here.

    python bench/nanogpt.py --nanogpt PATH [--seeds 1337 1 2] [--variant default] [--warm]

PATH is a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT); Tiny
Shakespeare comes from --data or $MLSCRATCH_SHARED_DATA/tinyshakespeare.txt. A variant
adds options to `mlscratch train`: `default` none (the from-scratch path with its
hand-written backward passes, compiled since the run is long enough; nanoGPT's exact
GELU), `eager` --compile false, `plain` --hand_backward false --compile false (autograd
on the elementary operations), `fused` --fused true --compile false. Inductor compiles
with one worker process (one thread each) into a cache directory of its own: empty for
every run (a cold cache, a first run on a fresh machine), or with --warm filled once by
a one-step run of the same model before the measured runs (a later run of the same
model). Writes bench/results/nanogpt.json (or nanogpt_VARIANT[_warm].json).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import save
from shakespeare_char import matmul_peak

from mlscratch.llm.gpt import GPT, GPTConfig, flops_per_token

CONFIG = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
    lr_decay_iters=2000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
    weight_decay=0.1, dropout=0.0, bias=False, grad_clip=1.0, eval_interval=250,
    eval_iters=200, log_interval=10,
)  # fmt: skip
VARIANTS = {
    "default": [],
    "eager": ["--compile", "false"],
    "plain": ["--hand_backward", "false", "--compile", "false"],
    "fused": ["--fused", "true", "--compile", "false"],
}
SEED_LINE = "torch.manual_seed(1337 + seed_offset)"


def prepare_nanogpt(src, text_path, work):
    """A copy of nanoGPT's scripts with Tiny Shakespeare prepared (no download)."""
    dst = work / "nanogpt"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "assets", "*.ipynb"))
    data = dst / "data" / "shakespeare_char"
    shutil.copy(text_path, data / "input.txt")  # prepare.py downloads only when absent
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    if SEED_LINE not in (dst / "train.py").read_text():
        raise SystemExit(f"{src}/train.py has no line {SEED_LINE!r}: another nanoGPT version?")
    return dst


def nanogpt_command(root, seed, out_dir):
    script = root / f"train_seed{seed}.py"
    script.write_text(
        (root / "train.py").read_text().replace(SEED_LINE, f"torch.manual_seed({seed})")
    )
    options = {**CONFIG, "device": "cpu", "compile": False, "out_dir": out_dir}
    args = [f"--{k}={v}" for k, v in options.items()]
    return [sys.executable, script.name, "config/train_shakespeare_char.py", *args]


def ours_command(text_path, seed, out_dir, variant):
    options = {**CONFIG, "tokenizer": "char", "gelu": "exact", "seed": seed, "out_dir": out_dir}
    args = [a for k, v in options.items() for a in (f"--{k}", str(v).lower())]
    return [
        sys.executable,
        "-m",
        "mlscratch",
        "train",
        "--data",
        str(text_path),
        "--quiet",
        *args,
        *VARIANTS[variant],
    ]


def warm_up(text_path, work, variant, env):
    """One step and two evaluations of the same model: fills Inductor's cache."""
    argv = ours_command(text_path, 0, work / "warm-up", variant) + ["--compile", "true"]
    for option, value in (("--max_iters", "1"), ("--eval_iters", "2"), ("--eval_interval", "1")):
        argv[argv.index(option) + 1] = value
    run_together([("warm-up", argv, work)], env)


def run_together(commands, env=None):
    """Start every (name, argv, cwd) at once; {name: (wall s, peak RSS MiB, stdout)}."""
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, out = {}, {}
    for name, argv, cwd in commands:
        log = open(Path(cwd) / f"{name}.log", "w+")  # noqa: SIM115
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs[proc.pid] = (name, start, log)
    while procs:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in procs:
            continue
        name, start, log = procs.pop(pid)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name} failed:\n{text[-3000:]}")
        out[name] = (wall, usage.ru_maxrss / 1024, text)
    return out


def final_val_nanogpt(text):
    found = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", text)
    return float(found[-1][1])


def final_val_ours(out_dir):
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").open()]
    return [r["val_loss"] for r in records if "val_loss" in r][-1]


def summarize(rows, tokens):
    """Per program: mean val loss over the seeds, total wall time, throughput, peak RSS."""
    out = []
    for name in ("nanogpt", "ours"):
        mine = [r for r in rows if r["program"] == name]
        wall = sum(r["wall s"] for r in mine)
        out.append({"seed": "mean / total", "program": name,
                    "val loss": round(statistics.mean(r["val loss"] for r in mine), 4),
                    "wall s": round(wall, 1), "tokens/s": round(tokens * len(mine) / wall),
                    "peak RSS MiB": max(r["peak RSS MiB"] for r in mine), "MFU": ""})  # fmt: skip
    ratio = out[0]["wall s"] / out[1]["wall s"]
    out[0]["throughput vs nanoGPT"], out[1]["throughput vs nanoGPT"] = "1.00x", f"{ratio:.2f}x"
    for row in rows:
        row.setdefault("throughput vs nanoGPT", "")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--data", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--warm", action="store_true", help="Inductor's cache filled first")
    parser.add_argument("--smoke", action="store_true", help="20 iterations, to try the script")
    args = parser.parse_args()
    if args.smoke:
        CONFIG.update(
            max_iters=20, lr_decay_iters=20, warmup_iters=5, eval_interval=10, eval_iters=5
        )
    data = (
        args.data
        or Path(os.environ.get("MLSCRATCH_SHARED_DATA", "../shared/data")) / "tinyshakespeare.txt"
    )
    if not data.is_file():
        raise SystemExit(f"no Tiny Shakespeare at {data}: pass --data")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = prepare_nanogpt(args.nanogpt, data, work)
        tokens = CONFIG["max_iters"] * CONFIG["batch_size"] * CONFIG["block_size"]
        sizes = {k: CONFIG[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
        flops = flops_per_token(GPT(GPTConfig(vocab_size=65, **sizes)), CONFIG["block_size"])
        torch.set_num_threads(1)
        inductor = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}
        if args.warm:
            inductor["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-warm")
            warm_up(data.resolve(), work, args.variant, inductor)
        for seed in args.seeds:
            peak = matmul_peak()  # FLOP/s of one thread, the machine idle
            ours_dir = work / f"ours-{seed}"
            if not args.warm:
                inductor["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{seed}")
            got = run_together([
                ("nanogpt", nanogpt_command(root, seed, f"out-{seed}"), root),
                ("ours", ours_command(data.resolve(), seed, ours_dir, args.variant), work),
            ], env=inductor)  # fmt: skip
            val = {
                "nanogpt": final_val_nanogpt(got["nanogpt"][2]),
                "ours": final_val_ours(ours_dir),
            }
            for name, (wall, rss, _) in got.items():
                rows.append({"seed": seed, "program": name, "val loss": round(val[name], 4),
                             "wall s": round(wall, 1), "tokens/s": round(tokens / wall),
                             "peak RSS MiB": round(rss),
                             "MFU": f"{flops * tokens / wall / peak:.1%}"})  # fmt: skip
            print(rows[-2], rows[-1], sep="\n", flush=True)
    rows += summarize(rows, tokens)
    name = "nanogpt" if args.variant == "default" else f"nanogpt_{args.variant}"
    name += "_warm" if args.warm else ""
    name += "_smoke" if args.smoke else ""  # a smoke test leaves the measured record alone
    notes = (
        f"nanoGPT's README CPU config on Tiny Shakespeare (char), both programs at once, one "
        f"thread each; ours: mlscratch train {' '.join(VARIANTS[args.variant]) or '(defaults)'} "
        f"with gelu exact; seeds {args.seeds}; val loss on 200 batches at iter 2000; "
        f"Inductor cache {'warm' if args.warm else 'cold'}, one compile worker."
    )
    save(name, rows, notes=notes)


if __name__ == "__main__":
    main()
