"""Our Tiny Shakespeare recipe against the clock: validation loss for several time budgets.

The recipe of bench/shakespeare_char.py (Llama's switches, batch 24, learning rate 2e-3,
the fused path, one evaluation at the end on 200 batches) trained for budgets that are
multiples of nanoGPT's own train.py wall-clock time on this machine (--reference
seconds, all threads). For each budget a 40-step probe measures the recipe's speed, and
the run gets the iterations that fit 93% of the budget (its cosine schedule ends there).
Records the training seconds, the iterations and the validation loss of each budget, to
show how far the loss is from a target such as 1.60 and how much time would reach it.

    python bench/recipe_budget.py [--reference 117] [--scales 1 1.5 2]
"""

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import save
from shakespeare_char import NANOGPT, RECIPE

from mlscratch.llm.train import train
from mlscratch.llm.trainer import TrainConfig


def run(data, out_dir, options, max_iters, eval_iters):
    steps = dict(max_iters=max_iters, lr_decay_iters=max_iters, eval_iters=eval_iters)
    options = {**NANOGPT, **options, **steps, "eval_interval": 100_000}  # at the start, the end
    cfg = TrainConfig(**options, data=data, out_dir=str(out_dir))
    return train(cfg, progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=float, default=117.0, help="nanoGPT's seconds")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--data", default=None, help="Tiny Shakespeare (default: shared data)")
    args = parser.parse_args()
    shared = Path(os.environ.get("MLSCRATCH_SHARED_DATA", "../shared/data"))
    data = args.data or str(shared / "tinyshakespeare.txt")
    tmp = Path(tempfile.mkdtemp(prefix="recipe_budget_"))
    recipe = {**RECIPE, "compile": False}
    tokens_per_iter = recipe["batch_size"] * NANOGPT["block_size"]
    rows = []
    for scale in args.scales:
        budget = scale * args.reference
        probe = run(data, tmp / f"probe-{scale}", {**recipe, "warmup_iters": 5}, 40, 1)
        iters = int(0.93 * budget * probe["tokens_per_s"] / tokens_per_iter)
        summary = run(data, tmp / f"run-{scale}", recipe, iters, 200)
        rows.append({"budget": f"{scale:g} x nanoGPT ({budget:.0f} s)", "iters": iters,
                     "train s": round(summary["train_s"], 1),
                     "val loss": round(summary["val_loss"], 4)})  # fmt: skip
        print(rows[-1], flush=True)
    changed = ", ".join(f"{k} {v}" for k, v in recipe.items() if k != "eval_interval")
    save(
        "recipe_budget",
        rows,
        notes=f"Tiny Shakespeare (char), nanoGPT's CPU model with {changed}; "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; val loss on 200 "
        f"batches after the last step; nanoGPT's train.py took {args.reference:g} s here.",
    )


if __name__ == "__main__":
    main()
