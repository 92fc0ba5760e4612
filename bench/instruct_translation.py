"""Decoder-only translation on Multi30k (English -> German): BLEU by training minutes.

The recipe of the chapter "Instruction tuning" (mlscratch.tune.instruct) at benchmark size:
a joint byte-level BPE with the prompt's special tokens, a GPT pretrained for the first
--pretrain_fraction of the time budget on the training split's sentences as plain text
(both languages), then tuned on its pairs as instructions (loss on the German response
only), with packed batches. Every --eval_every_minutes of training time, and at the end,
it measures the response-only loss on the validation pairs and the BLEU of greedy
translations of test_2016_flickr, by mlscratch.text.bleu.corpus_bleu and by sacreBLEU side
by side. Rows go to bench/results/instruct_translation.json, together with Part III's
encoder-decoder curve from bench/results/multi30k.json when that file exists; the final
translations and the model's weights after each phase (pretraining.pt, tuning.pt) go to
--out_dir.

--minutes counts training time (pretraining included), not the evaluations nor the
tokenizer (whose seconds are recorded). Each phase has its own warmup and cosine decay.

    python bench/instruct_translation.py                  # the full hour
    python bench/instruct_translation.py --minutes 3 --eval_every_minutes 1.5 \
        --eval_sentences 200 --name instruct_translation_smoke   # a smoke test
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, peak_memory_mb, save

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import lr_schedule
from mlscratch.text.bleu import corpus_bleu
from mlscratch.text.multi30k import load_multi30k, multi30k_dir
from mlscratch.tune.instruct import (
    instruction_examples,
    make_optimizer,
    packed_batches,
    pad_batch,
    special_ids,
    text_examples,
    train_step,
    train_tokenizer,
    translate,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--minutes", type=float, default=60.0, help="training time, pretraining included"
    )
    p.add_argument("--pretrain_fraction", type=float, default=0.1)
    p.add_argument("--eval_every_minutes", type=float, default=10.0)
    p.add_argument("--eval_sentences", type=int, default=1000, help="test sentences to translate")
    p.add_argument("--data", default=None, help="Multi30k directory (default: multi30k_dir())")
    p.add_argument("--out_dir", default="runs/instruct_translation")
    p.add_argument("--name", default="instruct_translation", help="bench/results/NAME.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab_size", type=int, default=6000)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=8)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--llama", action="store_true", help="rotary positions, RMSNorm, SwiGLU")
    p.add_argument("--batch_size", type=int, default=16, help="packed windows per step")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of each phase")
    p.add_argument("--weight_decay", type=float, default=0.1)
    args = p.parse_args(argv)
    if not 0 <= args.pretrain_fraction < 1:
        p.error(f"--pretrain_fraction must be in [0, 1), got {args.pretrain_fraction}")
    if not args.minutes > 0 or not args.eval_every_minutes > 0:
        p.error("--minutes and --eval_every_minutes must be > 0")
    return args


def make_model(args, vocab_size):
    sizes = dict(
        vocab_size=vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
        fused=True,
    )
    config = GPTConfig.llama(**sizes) if args.llama else GPTConfig(gelu="exact", **sizes)
    torch.manual_seed(args.seed)
    return GPT(config)


@torch.no_grad()
def response_loss(model, examples, batch_size=64):
    """Mean response-only loss over examples, in padded batches."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        idx, targets = pad_batch(examples[s : s + batch_size], pad_id=0)
        n = int((targets != -1).sum())
        total += model(idx, targets)[1].item() * n
        count += n
    return total / count


def bleu_scores(hypotheses, references):
    """Ours and, when installed, sacreBLEU's (the reference implementation)."""
    ours = round(corpus_bleu(hypotheses, references), 2)
    try:
        import sacrebleu
    except ImportError:
        return ours, None
    return ours, round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)


def part3_curve():
    """Part III's encoder-decoder rows (greedy) from bench/results/multi30k.json, if any."""
    path = RESULTS / "multi30k.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    rows = [r for r in record["rows"] if r.get("decoding") == "greedy"]
    return {
        "date": record["date"],
        "notes": record["notes"],
        "curve": [{"minutes": r["minutes"], "bleu": r["bleu"]} for r in rows],
    }


class Run:
    """The model, the data and the clock of training time; evaluate() adds a row."""

    def __init__(self, args, model, tokenizer, val, test):
        self.args, self.model, self.tokenizer = args, model, tokenizer
        self.val, self.test = val, test
        self.seconds, self.step, self.rows, self.losses = 0.0, 0, [], []
        self.tokens = 0

    def phase(self, name, batches, seconds, next_eval):
        """Train for `seconds` of training time; evaluate at each multiple of eval_every."""
        args, start = self.args, self.seconds
        optimizer = make_optimizer(self.model, args.learning_rate, args.weight_decay)
        self.model.train()
        while self.seconds - start < seconds:
            done = (self.seconds - start) / seconds
            lr = lr_schedule(
                int(1000 * done), args.learning_rate, int(1000 * args.warmup), 1000, args.min_lr
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)
            t0 = time.perf_counter()
            self.losses.append(train_step(self.model, optimizer, batch))
            self.seconds += time.perf_counter() - t0
            self.step += 1
            self.tokens += batch[0].numel()
            if self.seconds >= next_eval * 60:
                self.evaluate(name)
                self.model.train()
                next_eval += args.eval_every_minutes
        return next_eval

    def evaluate(self, phase):
        t0 = time.perf_counter()
        sources, references = zip(*self.test[: self.args.eval_sentences], strict=True)
        hypotheses = translate(self.model, self.tokenizer, sources, batch_size=128)
        ours, sacre = bleu_scores(hypotheses, list(references))
        recent = self.losses[-50:]
        row = {
            "minutes": round(self.seconds / 60, 2),
            "phase": phase,
            "step": self.step,
            "train_loss": round(sum(recent) / max(len(recent), 1), 4),
            "val_loss": round(response_loss(self.model, self.val), 4),
            "bleu": ours,
            "sacrebleu": sacre,
            "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9)),
            "eval_seconds": round(time.perf_counter() - t0, 1),
        }
        self.rows.append(row)
        self.hypotheses = hypotheses
        print(row, flush=True)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = args.data or multi30k_dir()
    if directory is None:
        sys.exit("instruct_translation: Multi30k not found (set MLSCRATCH_SHARED_DATA or --data)")
    splits = load_multi30k(directory)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(splits["train"], args.vocab_size)
    tokenizer_seconds = time.perf_counter() - t0
    model = make_model(args, tokenizer.vocab_size)
    fits = lambda examples: [e for e in examples if len(e[0]) <= args.block_size]  # noqa: E731
    plain = fits(text_examples(tokenizer, splits["train"]))
    tasks = fits(instruction_examples(tokenizer, splits["train"]))
    val = fits(instruction_examples(tokenizer, splits["val"]))
    end_id = special_ids(tokenizer)[2]
    run = Run(args, model, tokenizer, val, splits["test_2016_flickr"])
    budget = args.minutes * 60
    stages = [
        ("pretraining", plain, args.pretrain_fraction * budget),
        ("tuning", tasks, (1 - args.pretrain_fraction) * budget),
    ]
    next_eval = args.eval_every_minutes
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, examples, seconds in stages:
        if seconds > 0:
            batches = packed_batches(examples, args.block_size, args.batch_size, end_id, args.seed)
            next_eval = run.phase(name, batches, seconds, next_eval)
            torch.save(model.state_dict(), out_dir / f"{name}.pt")  # e.g. a base for LoRA
    if not run.rows or run.rows[-1]["step"] != run.step:
        run.evaluate("tuning")
    (out_dir / "translations.de").write_text("\n".join(run.hypotheses) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    notes = (
        f"Decoder-only GPT ({'Llama' if args.llama else 'GPT-2'} layout), {args.n_layer} layers, "
        f"width {args.n_embd}, {args.n_head} heads, block {args.block_size}, dropout "
        f"{args.dropout}, {n_params / 1e6:.2f} M parameters; joint byte-level BPE of "
        f"{tokenizer.vocab_size} tokens ({tokenizer_seconds:.1f} s, not counted). "
        f"{args.minutes:g} minutes of training on {args.threads} threads: the first "
        f"{args.pretrain_fraction:.0%} pretraining on {len(plain)} plain sentences (both "
        f"languages), then instruction tuning on {len(tasks)} pairs, response-only loss; "
        f"packed batches of {args.batch_size} x {args.block_size} tokens; AdamW "
        f"(0.9, 0.95), weight decay {args.weight_decay}, lr {args.learning_rate} with "
        f"{args.warmup:.0%} warmup and cosine decay to {args.min_lr} in each phase. BLEU of "
        f"greedy translations of {len(run.hypotheses)} sentences of test_2016_flickr, ours "
        f"and sacreBLEU. Peak memory {peak_memory_mb():.0f} MiB."
    )
    save(args.name, run.rows, notes=notes)
    path = RESULTS / f"{args.name}.json"
    record = json.loads(path.read_text())
    record["args"] = vars(args)
    record["encoder_decoder"] = part3_curve()
    path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
