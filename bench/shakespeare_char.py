"""Part III training on Tiny Shakespeare, character level, beside a torch.nn baseline.

nanoGPT's README CPU configuration (n_layer 4, n_head 4, n_embd 128, block_size 64,
batch_size 12, max_iters 2000, lr_decay_iters 2000, learning_rate 1e-3, min_lr 1e-4,
warmup_iters 100, beta2 0.99, weight_decay 0.1, dropout 0, and nanoGPT's default
bias False and grad_clip 1.0) trains in the same process, one run after another:

- the baseline: the same GPT built from torch.nn layers (nn.Embedding, nn.LayerNorm,
  nn.Linear, nn.GELU) with F.scaled_dot_product_attention and torch.optim.AdamW, fed the
  same batches by the same training schedule in a plain loop;
- ours: `mlscratch.llm.train.train` with the identical configuration, on the
  hand-written path, the fused path, and the fused path under torch.compile.

Every run's validation loss is estimated on the same 200 batches (eval_iters 200), and
throughput counts training time only (evaluations excluded). Model FLOP utilization is
6 N + 12 L C T FLOPs per token (N parameters without embeddings) against the float32
matmul peak measured in the same process. Then a recipe of our choosing trains for the
training time of the baseline run, and its validation loss is reported beside 1.886.

    python bench/shakespeare_char.py [--data PATH] [--runs baseline,hand,fused,compiled,recipe]
    python bench/shakespeare_char.py --runs seeds --seeds 1337,1,2,3,4 --threads 1

The second form trains ours (fused) and the baseline with several seeds (initial weights
and batches), to show the spread of the final validation loss that a single run sits in.
"""

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import save
from torch import nn

from mlscratch.llm.data import batch_at, load_split, random_offsets
from mlscratch.llm.gpt import GPT, flops_per_token
from mlscratch.llm.optim import lr_schedule
from mlscratch.llm.run import read_metrics
from mlscratch.llm.sample import load_model
from mlscratch.llm.train import TrainConfig, train
from mlscratch.llm.trainer import estimate_loss, split_loss

NANOGPT = dict(
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    max_iters=2000,
    lr_decay_iters=2000,
    learning_rate=1e-3,
    min_lr=1e-4,
    warmup_iters=100,
    beta2=0.99,
    weight_decay=0.1,
    dropout=0.0,
    bias=False,
    grad_clip=1.0,
    eval_interval=500,
    eval_iters=200,
    log_interval=50,
    tokenizer="char",
    seed=1337,
)
# Our recipe for the same training time: Llama's switches, twice the batch at twice the
# learning rate, the fused path (torch.compile's start-up would eat a third of the budget).
RECIPE = dict(
    fused=True,
    pos="rope",
    norm="rmsnorm",
    mlp="swiglu",
    batch_size=24,
    learning_rate=2e-3,
    min_lr=2e-4,
    warmup_iters=50,
    eval_interval=100_000,
)
# nanoGPT's README: val loss 1.886 (a 20-batch estimate); its train.py took 117 s here
REFERENCE = {"val_loss": 1.886, "seconds": 117}


class Block(nn.Module):
    """A GPT-2 block the usual way: torch.nn layers and SDPA."""

    def __init__(self, C, n_head, bias):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=bias), nn.LayerNorm(C, bias=bias)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(C, 4 * C, bias=bias),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * C, C, bias=bias),
        )

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class BaselineGPT(nn.Module):
    def __init__(self, V, T, L, C, H, bias):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H, bias) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, bias=bias)
        for name, p in self.named_parameters():  # GPT-2's initialization, as ours
            if p.ndim == 2:
                std = (
                    0.02 / math.sqrt(2 * L)
                    if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight")
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_baseline(cfg, out_dir):
    """nanoGPT's loop with torch.optim.AdamW, on the token files of our run in out_dir."""
    data = {name: load_split(Path(out_dir) / f"{name}.bin") for name in ("train", "val")}
    vocab = int(max(data["train"].max(), data["val"].max())) + 1
    torch.manual_seed(cfg.seed)
    model = BaselineGPT(vocab, cfg.block_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.bias)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
    )
    batches = torch.Generator().manual_seed(cfg.seed)
    train_s = 0.0
    for it in range(cfg.max_iters):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_schedule(
                it, cfg.learning_rate, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr
            )
        offsets = random_offsets(len(data["train"]), cfg.block_size, (1, cfg.batch_size), batches)
        x, y = batch_at(data["train"], offsets[0], cfg.block_size)
        _, loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - start
    val = estimate_loss(model, data, cfg.block_size, cfg.batch_size, cfg.eval_iters, cfg.seed)
    return {
        "val_loss": val["val"],
        "train_loss": val["train"],
        "train_s": train_s,
        "val_full": split_loss(model, data["val"], cfg.block_size),
        "tokens_per_s": cfg.max_iters * cfg.batch_size * cfg.block_size / train_s,
    }


def seed_study(data, seeds, tmp):
    """Final validation loss of ours (fused) and of the baseline, one pair per seed."""
    rows = []
    for seed in seeds:
        cfg = TrainConfig(
            **{
                **NANOGPT,
                "data": data,
                "out_dir": str(tmp / f"seed{seed}"),
                "seed": seed,
                "fused": True,
                "eval_interval": NANOGPT["max_iters"],
            }
        )
        summary = train(cfg, progress=False)
        if summary["interrupted"]:
            raise SystemExit(f"seed {seed}: stopped by {summary['interrupted']}")
        base = train_baseline(cfg, tmp / f"seed{seed}")  # the same token files
        row = {
            "seed": seed,
            "ours": summary["val_loss"],
            "baseline": base["val_loss"],
            "ours, full split": full_split(tmp / f"seed{seed}"),
            "baseline, full split": base["val_full"],
        }
        print(row, flush=True)
        rows.append(row)
    for name, stat in (("mean", statistics.mean), ("std", statistics.stdev)):
        rows.append(
            {
                "seed": name,
                **{k: stat([r[k] for r in rows[: len(seeds)]]) for k in rows[0] if k != "seed"},
            }
        )
    return [{k: v if k == "seed" else round(v, 4) for k, v in r.items()} for r in rows]


def full_split(out_dir):
    """Validation loss of a finished run of ours over every token of the split."""
    model, _, _ = load_model(out_dir)
    return split_loss(model, load_split(Path(out_dir) / "val.bin"), model.config.block_size)


def matmul_peak(n=1024, repeat=20):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Tiny Shakespeare (default: shared data)")
    parser.add_argument("--runs", default="baseline,hand,fused,compiled,recipe")
    parser.add_argument("--recipe", default="{}", help="JSON: options that change the recipe")
    parser.add_argument("--seeds", default="1337,1,2,3,4", help="seeds of --runs seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or os.path.join(
        os.environ.get(
            "MLSCRATCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        ),
        "tinyshakespeare.txt",
    )
    runs = args.runs.split(",")
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="shakespeare_char_"))
    if runs == ["seeds"]:
        seeds = [int(s) for s in args.seeds.split(",")]
        save(
            "shakespeare_char_seeds",
            seed_study(data, seeds, tmp),
            notes=(
                f"nanoGPT's README CPU config, identical for both; each seed fixes the initial "
                f"weights and the batches, which both runs of a row share; val loss on the same "
                f"200 batches, and over every token of the validation split; std is the sample "
                f"standard deviation over the {len(seeds)} seeds. "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads."
            ),
        )
        return
    peak = matmul_peak()

    def ours(name, **options):
        cfg = TrainConfig(**{**NANOGPT, "data": data, "out_dir": str(tmp / name), **options})
        start = time.perf_counter()
        summary = train(cfg, progress=False)
        wall = time.perf_counter() - start
        if summary["interrupted"]:
            raise SystemExit(f"{name}: stopped by {summary['interrupted']}")
        model = GPT(cfg.model_config(65))
        mfu = flops_per_token(model, cfg.block_size) * summary["tokens_per_s"] / peak
        print(name, summary, flush=True)
        return cfg, summary, wall, mfu

    cfg, first, wall, mfu = ours("hand")  # also writes the token files the baseline reads
    results = {"hand": (first, wall, mfu)}
    base = None
    if "baseline" in runs:
        base = train_baseline(cfg, tmp / "hand")
        base_mfu = (
            flops_per_token(GPT(cfg.model_config(65)), cfg.block_size) * base["tokens_per_s"] / peak
        )
        print("baseline", base, flush=True)
        rows.append(
            {
                "run": "baseline: torch.nn + SDPA + torch.optim.AdamW",
                "val loss": round(base["val_loss"], 4),
                "val loss, full split": round(base["val_full"], 4),
                "train s": round(base["train_s"], 1),
                "tokens/s": round(base["tokens_per_s"]),
                "vs baseline": "1.00x",
                "MFU": f"{base_mfu:.1%}",
            }
        )
    for name, options in [
        ("fused", dict(fused=True)),
        ("compiled", dict(fused=True, compile=True)),
    ]:
        if name in runs:
            _, summary, wall, mfu = ours(name, **options)
            results[name] = (summary, wall, mfu)
    labels = {
        "hand": "ours, hand-written",
        "fused": "ours, fused",
        "compiled": "ours, fused + torch.compile",
    }
    for name, (summary, _wall, mfu) in results.items():
        ratio = f"{summary['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        if name == "compiled" and base:  # also without the compilation, after iter 500
            logged = [
                r["tokens_per_s"]
                for r in read_metrics(tmp / name / "metrics.jsonl")
                if "tokens_per_s" in r and r["iter"] >= 500
            ]
            ratio += f" ({statistics.median(logged) / base['tokens_per_s']:.2f}x after iter 500)"
        rows.append(
            {
                "run": labels[name],
                "val loss": round(summary["val_loss"], 4),
                "val loss, full split": round(full_split(tmp / name), 4),
                "train s": round(summary["train_s"], 1),
                "tokens/s": round(summary["tokens_per_s"]),
                "vs baseline": ratio,
                "MFU": f"{mfu:.1%}",
            }
        )
    if "recipe" in runs:
        # the budget: the baseline's training time (evaluations are measurements, excluded
        # from every row's training time alike)
        budget = base["train_s"] if base else REFERENCE["seconds"]
        recipe = {**RECIPE, **json.loads(args.recipe)}
        # calibrate: iterations that fit the budget at this recipe's speed
        _, probe, _, _ = ours(
            "probe",
            **{**recipe, "warmup_iters": 5, "eval_iters": 1},
            max_iters=60,
            lr_decay_iters=60,
        )
        tokens_per_iter = recipe.get("batch_size", NANOGPT["batch_size"]) * recipe.get(
            "block_size", NANOGPT["block_size"]
        )
        seconds_per_iter = tokens_per_iter / probe["tokens_per_s"]
        iters = int(0.95 * budget / seconds_per_iter)  # a margin for the machine's noise
        _, summary, wall, mfu = ours("recipe", **recipe, max_iters=iters, lr_decay_iters=iters)
        changed = ", ".join(f"{k} {v}" for k, v in recipe.items() if k != "eval_interval")
        rows.append(
            {
                "run": f"recipe: {changed}, {iters} iters",
                "val loss": round(summary["val_loss"], 4),
                "val loss, full split": round(full_split(tmp / "recipe"), 4),
                "train s": round(summary["train_s"], 1),
                "tokens/s": round(summary["tokens_per_s"]),
                "vs baseline": f"train {summary['train_s']:.0f} s vs {budget:.0f} s",
                "MFU": f"{mfu:.1%}",
            }
        )
    save(
        "shakespeare_char",
        rows,
        notes=(
            f"nanoGPT's README CPU config on Tiny Shakespeare (char level, bias False, dropout 0); "
            f"val loss on the same 200 batches for every run, and over every token of the "
            f"validation split in consecutive windows of 64 (nanoGPT reports "
            f"{REFERENCE['val_loss']} on its own 20-batch estimate, in about "
            f"{REFERENCE['seconds']} s here). Throughput over training time only; MFU against "
            f"a float32 1024^3 matmul peak of {peak / 1e9:.0f} GFLOP/s measured in this run; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at the "
            f"end {os.getloadavg()[0]:.1f}."
        ),
    )


if __name__ == "__main__":
    main()
