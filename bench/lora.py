"""LoRA beside full fine-tuning: trainable share, peak memory, time per step, held-out score.

A task is a function that returns a `Task`: a base model (never changed), a source of
training batches (x, y) and a score of a model. `stdlib_task` adapts the Part V base model
(a GPT trained on the book's default corpus of standard-library modules) to the source of
`asyncio`, which that corpus leaves out, and scores the held-out loss, each method at a
constant learning rate. `translation_task` tunes the GPT pretrained by
bench/instruct_translation.py (its pretraining.pt, --base) to translate Multi30k English to
German as instructions and scores the BLEU of greedy translations of test_2016_flickr, with
that benchmark's recipe (packed batches, warmup and cosine decay over the budget, gradient
clipping). Every method trains from the same base, on the same batches, for the same number
of steps, or for the same seconds with --seconds.
Peak memory is the peak of CPU tensor memory (PyTorch's profiler) while a fresh copy of
the model is built, adapted and trained for two steps. Time per step: the median over the
run (ms_per_step), and over blocks of 5 steps in which the methods take turns
(ms_interleaved, and its ratio to full fine-tuning's), which a changing load hits alike.

    OMP_NUM_THREADS=2 python bench/lora.py [--task stdlib] [--steps 200] [--seconds S]
    python bench/lora.py --task translation --seconds 900 --name lora_translation \
        --base runs/instruct_translation/pretraining.pt --methods full "lora r=8 all maps"
"""

import argparse
import copy
import fcntl
import json
import statistics
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from common import RESULTS, save

from mlscratch.llm.data import encode_splits
from mlscratch.llm.gpt import GPT
from mlscratch.llm.optim import AdamW
from mlscratch.llm.run import CHECKPOINT
from mlscratch.llm.sample import load_model
from mlscratch.llm.train import TrainConfig, train
from mlscratch.llm.trainer import split_loss
from mlscratch.text.corpus import DEFAULT_CORPUS_FILES
from mlscratch.text.multi30k import load_multi30k, multi30k_dir
from mlscratch.tune import instruct
from mlscratch.tune.lora import add_lora, count_parameters, finetune, lm_batches, peak_memory

ROOT = Path(__file__).resolve().parents[1]
BASE = TrainConfig(  # the base model of Part V (book/tune), trained once
    out_dir=str(ROOT / "_build" / "tune" / "stdlib-bpe"), tokenizer="bpe", vocab_size=1024,
    n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, max_iters=400,
    eval_interval=200, eval_iters=10, dropout=0.0,
)  # fmt: skip
ASYNCIO = [
    f"asyncio/{name}.py"
    for name in ("base_events", "events", "futures", "locks", "queues", "streams", "tasks",
                 "transports")
]  # fmt: skip
# name: (add_lora options, or None for full fine-tuning; learning rate); embeddings=True
# also trains the token embedding table (tied to the output layer), as peft's modules_to_save
METHODS = {
    "full": (None, 1e-3),
    "lora r=8 c_attn": (dict(r=8, alpha=16), 1e-2),
    "lora r=4 all maps": (dict(r=4, alpha=16, targets=("c_attn", "c_proj", "c_fc")), 1e-2),
    "lora r=8 all maps": (dict(r=8, alpha=16, targets=("c_attn", "c_proj", "c_fc")), 1e-2),
    "lora r=16 all maps": (dict(r=16, alpha=16, targets=("c_attn", "c_proj", "c_fc")), 1e-2),
    "lora r=4 all maps + embeddings": (
        dict(r=4, alpha=16, targets=("c_attn", "c_proj", "c_fc"), embeddings=True),
        1e-2,
    ),
}


@dataclass
class Task:
    name: str
    model: GPT  # the pretrained model every method starts from (left unchanged)
    batches: Callable[[int], Iterator]  # seed -> endless iterator of training batches (x, y)
    score: Callable[[GPT], float]  # a model -> its held-out score
    score_name: str
    higher_is_better: bool
    recipe: str = "AdamW without weight decay, constant learning rate"  # for the notes
    # (model, batch) -> the loss of one batch, to backpropagate
    loss: Callable = lambda model, batch: model(*batch)[1]
    # (model, batches, steps, seconds, lr) -> seconds of each step; default: constant lr
    fit: Callable = lambda model, batches, steps, seconds, lr: finetune(
        model, batches, steps, lr, max_seconds=seconds
    )[0]


def stdlib_task(batch_size=16):
    """The Part V base model adapted to asyncio's source; score: held-out loss."""
    if not (Path(BASE.out_dir) / CHECKPOINT).is_file():
        train(BASE, progress=False)
    model, tokenizer, _ = load_model(BASE.out_dir)
    assert not set(ASYNCIO) & set(DEFAULT_CORPUS_FILES)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n\n".join((stdlib / name).read_text(encoding="utf-8") for name in ASYNCIO)
    splits = encode_splits(text, tokenizer)
    T = model.config.block_size
    return Task(
        name="stdlib: the Part V base model adapted to asyncio's source",
        model=model,
        batches=lambda seed: lm_batches(splits["train"], T, batch_size, seed),
        score=lambda m: split_loss(m, splits["val"], T),
        score_name="held-out loss",
        higher_is_better=False,
    )


def schedule_fit(model, batches, steps, seconds, lr):
    """The instruction-tuning recipe (instruct.fit): AdamW with weight decay on matrices,
    warmup and cosine decay over the budget, clipping; returns the seconds of each step."""
    budget = dict(seconds=seconds) if seconds else dict(steps=steps)
    start = time.perf_counter()
    history = instruct.fit(model, batches, learning_rate=lr, min_lr=lr / 10, **budget)
    starts = [t for t, _ in history] + [time.perf_counter() - start]
    return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]


def translation_task(base=None, eval_sentences=1000, batch_size=16):
    """The GPT pretrained by bench/instruct_translation.py tuned to translate Multi30k
    English to German (response-only loss, packed batches); score: BLEU on test2016."""
    import instruct_translation as it  # bench/instruct_translation.py: model and BLEU

    defaults = it.parse_args([])
    base = Path(base or Path(defaults.out_dir) / "pretraining.pt")
    if not base.is_file():
        raise SystemExit(f"lora: {base} not found; run bench/instruct_translation.py first")
    splits = load_multi30k(multi30k_dir())
    tokenizer = instruct.train_tokenizer(splits["train"], defaults.vocab_size)
    model = it.make_model(defaults, tokenizer.vocab_size)
    model.load_state_dict(torch.load(base, weights_only=True))
    end_id = instruct.special_ids(tokenizer)[2]
    T = defaults.block_size
    tasks = [e for e in instruct.instruction_examples(tokenizer, splits["train"]) if len(e[0]) <= T]
    sources, references = zip(*splits["test_2016_flickr"][:eval_sentences], strict=True)

    def bleu(m):
        return it.bleu_scores(instruct.translate(m, tokenizer, sources, batch_size=128),
                              list(references))[0]  # fmt: skip

    return Task(
        name=f"translation: Multi30k en->de as instructions from {base}",
        model=model,
        batches=lambda seed: instruct.packed_batches(tasks, T, batch_size, end_id, seed),
        score=bleu,
        score_name=f"BLEU, greedy, {len(sources)} sentences of test2016",
        higher_is_better=True,
        recipe="AdamW (weight decay 0.1 on matrices), 5% warmup, cosine decay to lr/10",
        loss=lambda m, batch: m(batch[0], batch[1], doc=batch[2])[1],
        fit=schedule_fit,
    )


TASKS = {  # name -> the Task, built from the command line's options
    "stdlib": lambda args: stdlib_task(),
    "translation": lambda args: translation_task(args.base, args.eval_sentences),
}


def prepared(task, options):
    """A fresh copy of the task's base model, with adapters when options are given."""
    torch.manual_seed(0)
    model = copy.deepcopy(task.model)
    if options is None:
        return model
    options = dict(options)
    embeddings = options.pop("embeddings", False)
    add_lora(model, **options)
    model.wte.requires_grad_(embeddings)
    return model


def measure(task, name, options, lr, steps, seconds, before):
    """One method: parameters, peak memory, ms per step, score before and after."""
    model = prepared(task, options)
    times = task.fit(model, task.batches(0), steps, seconds, lr)
    after = task.score(model)
    peak, _ = peak_memory(lambda: task.fit(prepared(task, options), task.batches(1), 2, None, lr))
    trainable, total = count_parameters(model)
    print(
        name, f"{len(times)} steps", f"{task.score_name}: {before:.4f} -> {after:.4f}", flush=True
    )
    return {
        "method": name,
        "lr": lr,
        "trainable": trainable,
        "trainable_pct": round(100 * trainable / total, 2),
        "peak_mib": round(peak / 2**20, 1),
        "ms_per_step": round(1000 * statistics.median(times), 1),
        "steps": len(times),
        "train_s": round(sum(times), 1),
        "score_before": round(before, 4),
        "score_after": round(after, 4),
    }


def interleaved_ms(task, names, blocks=6, block=5):
    """Median ms per training step of each method, measured in blocks of steps that take
    turns (the order rotates), so that a change in the machine's load hits all alike."""
    runs = {}
    for name in names:
        model = prepared(task, METHODS[name][0])
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), AdamW(params, lr=METHODS[name][1], weight_decay=0.0))
    batches, times = task.batches(2), {name: [] for name in names}
    for k in range(blocks + 1):  # block 0 warms up
        for name in names[k % len(names) :] + names[: k % len(names)]:
            model, optimizer = runs[name]
            for _ in range(block):
                batch = next(batches)
                start = time.perf_counter()
                task.loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if k:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="stdlib")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=None, help="training time per method")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--base", default=None, help="translation: the pretrained weights")
    parser.add_argument(
        "--eval_sentences", type=int, default=1000, help="translation: test sentences to score"
    )
    parser.add_argument("--name", default="lora", help="bench/results/NAME.json")
    parser.add_argument("--lora_lr", type=float, default=None, help="every LoRA method's lr")
    parser.add_argument("--full_lr", type=float, default=None, help="full fine-tuning's lr")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the rows of other methods in NAME.json (runs of one method each, in "
        "separate processes at the same time, add up to one record)",
    )
    args = parser.parse_args()
    task = TASKS[args.task](args)
    before = task.score(task.model)  # the base model's; LoRA starts there exactly (B = 0)
    run = (args.steps, args.seconds, before)
    for name, (options, lr) in METHODS.items():
        new = args.full_lr if options is None else args.lora_lr
        METHODS[name] = (options, new or lr)
    rows = [measure(task, m, *METHODS[m], *run) for m in args.methods]
    ms = interleaved_ms(task, args.methods)
    for row in rows:
        row["ms_interleaved"] = round(ms[row["method"]], 1)
        row["ms_vs_full"] = round(ms[row["method"]] / ms["full"], 2) if "full" in ms else None
    budget = f"{args.seconds} s of training" if args.seconds else f"{args.steps} steps"
    with lock(RESULTS / f".{args.name}.lock"):
        old = RESULTS / f"{args.name}.json"
        if args.keep and old.is_file():
            mine = {row["method"] for row in rows}
            rows += [r for r in json.loads(old.read_text())["rows"] if r["method"] not in mine]
        save(
            args.name,
            rows,
            notes=f"{task.name}; score: {task.score_name} "
            f"({'higher' if task.higher_is_better else 'lower'} is better); {budget} per method, "
            f"the same batches; {task.recipe}; "
            f"{torch.get_num_threads()} threads; peak_mib: CPU tensor memory (PyTorch's profiler) "
            f"of copying the model, adapting it and two steps.",
        )


@contextmanager
def lock(path):
    """Hold an exclusive lock on path (created if absent) inside the with block."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


if __name__ == "__main__":
    main()
