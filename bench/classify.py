"""Fine-tuning for classification (Part V): which standard-library module a docstring comes
from. The n-gram logistic-regression baseline (C chosen on validation) beside the GPT
classifier trained three ways (head only, head + last block, all), on the whole 128-token
context, over two seeds. Needs the base model of Part V (trained here if absent, ~75 s);
--base_iters N pretrains the same model longer (its own run directory) and starts from it;
--corpus stdlib pretrains it on every module of the standard library instead of the book's
small default corpus, minus the eight packages of the task, their tests and every test
directory (about 9 MB of Python). Rows of other seeds and bases already in
bench/results/classify.json are kept.

    python bench/classify.py [--seeds 0 1] [--base_iters 400] [--corpus default|stdlib]
"""

import argparse
import copy
import dataclasses
import json
import sysconfig
from pathlib import Path

import torch
from common import RESULTS, save

from mlscratch.llm.run import CHECKPOINT
from mlscratch.llm.sample import load_model
from mlscratch.llm.train import TrainConfig, train
from mlscratch.tune.classify import (
    CLASSIFY_MODULES,
    GPTClassifier,
    NgramVectorizer,
    SoftmaxRegression,
    docstring_task,
    encode_texts,
    fine_tune,
    make_batches,
    predict,
)

ROOT = Path(__file__).resolve().parent.parent
BASE = TrainConfig(
    out_dir=str(ROOT / "_build/tune/stdlib-bpe"), tokenizer="bpe", vocab_size=1024, n_layer=4,
    n_head=4, n_embd=128, block_size=128, batch_size=16, max_iters=400, eval_interval=200,
    eval_iters=10, dropout=0.0,
)  # fmt: skip
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
parser.add_argument("--base_iters", type=int, default=BASE.max_iters, help="pretraining steps")
parser.add_argument("--corpus", choices=("default", "stdlib"), default="default")
args = parser.parse_args()


def stdlib_corpus(path):
    """Every .py file of the standard library outside the task's packages and the tests,
    in one text file at path (written once); returns the path."""
    if not path.is_file():
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        skip = {"site-packages", "test", "tests", "idle_test", *CLASSIFY_MODULES}
        files = [f for f in sorted(stdlib.rglob("*.py")) if not skip & set(f.parts)
                 and not any(m in f.stem for m in CLASSIFY_MODULES)]  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files))
    return path


BASE_NAME = f"{args.corpus} corpus, {args.base_iters} steps"
if args.base_iters != BASE.max_iters or args.corpus != "default":
    out_dir = f"{BASE.out_dir}-{args.corpus}-{args.base_iters}"
    data = (
        str(stdlib_corpus(ROOT / "_build/tune/stdlib-wide.txt"))
        if args.corpus != "default"
        else None
    )
    BASE = dataclasses.replace(BASE, out_dir=out_dir, max_iters=args.base_iters, data=data)
CHOICES = {"head": (0, 30, 1e-2), "last1": (1, 10, 2e-3), "all": (4, 10, 1e-3)}


def accuracy(pred, y):
    return round((pred == y).float().mean().item(), 4)


if not (Path(BASE.out_dir) / CHECKPOINT).is_file():
    train(BASE, progress=False)
model, tokenizer, _ = load_model(BASE.out_dir)
task = docstring_task()
texts = {s: [ex.text for ex in getattr(task, s)] for s in ("train", "val", "test")}
labels = {s: torch.tensor([ex.label for ex in getattr(task, s)]) for s in texts}
rows = []
vec = NgramVectorizer(word=(1, 2), min_df=2).fit(texts["train"])
X = {s: vec.transform(texts[s]) for s in texts}
for C in (0.1, 1.0, 10.0):
    m = SoftmaxRegression(C=C).fit(X["train"], labels["train"], len(task.classes))
    acc = {s: accuracy(m.predict(X[s]), labels[s]) for s in ("val", "test")}
    rows.append({"model": f"ngram-logreg C={C}", "seed": 0, "base": None,
                 "trained": m.W.numel() + 8, **acc, "s_per_epoch": None,
                 "ms_per_step": None})  # fmt: skip
    print(rows[-1], flush=True)
seqs = {s: encode_texts(tokenizer, texts[s], BASE.block_size) for s in texts}
batches = {s: make_batches(seqs[s], labels[s], 32 if s == "train" else 128) for s in seqs}
for seed in args.seeds:
    for name, (blocks, epochs, lr) in CHOICES.items():
        torch.manual_seed(seed)
        clf = GPTClassifier(copy.deepcopy(model), len(task.classes))
        info = fine_tune(clf, batches["train"], blocks, epochs=epochs, lr=lr, seed=seed)
        acc = {s: accuracy(*predict(clf, batches[s])) for s in ("val", "test")}
        rows.append({"model": f"gpt-{name} ({epochs} ep)", "seed": seed,
                     "base": BASE_NAME, "trained": info["trained"], **acc,
                     "s_per_epoch": round(info["s_per_epoch"], 2),
                     "ms_per_step": round(info["s_per_step"] * 1e3, 1)})  # fmt: skip
        print(rows[-1], flush=True)
old = RESULTS / "classify.json"
if old.is_file():  # keep the GPT rows of other seeds and bases (the book's when unrecorded)
    kept = [r for r in json.loads(old.read_text())["rows"] if r["model"].startswith("gpt")]
    for r in kept:
        r["base"] = r.get("base", "default corpus, 400 steps")
    rows += [r for r in kept if (r["seed"], r["base"]) not in
             {(seed, BASE_NAME) for seed in args.seeds}]  # fmt: skip
save(
    "classify",
    rows,
    notes=f"{len(task.train)}/{len(task.val)}/{len(task.test)} docstrings of {task.classes}; "
    "GPT: first 128 tokens, batch 32, dropout 0.1, AdamW, warmup+cosine; the machine is shared",
)
