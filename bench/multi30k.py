"""Train the Part III Transformer on Multi30k (English -> German) for a fixed time; BLEU curve.

Trains on the 29,000 training pairs with a joint byte-level BPE vocabulary, and every
--eval_every_minutes of training time measures the validation loss and the BLEU of
greedy translations of test_2016_flickr, scored by mlscratch.text.bleu.corpus_bleu and by
sacreBLEU side by side (detokenized output against the raw references). At the end it
translates the test set once more with beam search (beam 4, alpha 0.6). Rows go to
bench/results/multi30k.json; the tokenizer, a checkpoint after every evaluation,
history.jsonl and the final translations go to --out_dir, so that an interrupted run
continues with --resume (the model and training options then come from the checkpoint).

--minutes counts training time only; evaluations add to the wall-clock time (each row
records how long its evaluation took).

    python bench/multi30k.py --minutes 60 --out_dir runs/multi30k
    python bench/multi30k.py --minutes 60 --out_dir runs/multi30k --resume
    python bench/multi30k.py --minutes 2 --eval_every_minutes 1 --d_model 64 --d_ff 128 \
        --n_layers 1 --vocab_size 2000 --eval_sentences 100 --out_dir /tmp/m30k  # smoke test
"""

import argparse
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import sacrebleu
import torch
from common import peak_memory_mb, save

from mlscratch.checkpoint import load_checkpoint
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.text.bleu import corpus_bleu
from mlscratch.text.multi30k import (
    encode_pairs,
    load_multi30k,
    multi30k_dir,
    special_ids,
    train_joint_bpe,
)
from mlscratch.torch_transformer.decoding import translate
from mlscratch.torch_transformer.model import Transformer, TransformerConfig
from mlscratch.torch_transformer.training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    TrainConfig,
    Trainer,
    model_from_checkpoint,
    train_config_from_dict,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training time (minutes)")
    p.add_argument("--eval_every_minutes", type=float, default=10.0)
    p.add_argument("--out_dir", default="runs/multi30k")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    p.add_argument("--data", default=None, help="Multi30k directory (default: multi30k_dir())")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--vocab_size", type=int, default=6000)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--n_heads", type=int, default=8)
    p.add_argument("--d_ff", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument(
        "--norm_first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pre-norm layout (--no-norm_first: post-norm, as in the paper)",
    )
    p.add_argument("--batch_tokens", type=int, default=2000)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--schedule", default="inverse_sqrt", choices=("inverse_sqrt", "noam", "cosine"))
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--max_iters", type=int, default=None, help="stop after this many updates")
    p.add_argument(
        "--lr_decay_iters",
        type=int,
        default=None,
        help="cosine: where it reaches min_lr (default: max_iters)",
    )
    p.add_argument("--min_lr", type=float, default=0.0, help="cosine only")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.98)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--eps", type=float, default=1e-9)
    p.add_argument("--label_smoothing", type=float, default=0.1)
    p.add_argument("--grad_clip", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_interval", type=int, default=50)
    p.add_argument("--beam_size", type=int, default=4, help="for the final evaluation")
    p.add_argument(
        "--eval_sentences",
        type=int,
        default=0,
        help="test sentences to translate at each evaluation (0: all)",
    )
    p.add_argument("--eval_batch", type=int, default=100, help="sentences per decoding batch")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--name", default="multi30k", help="bench/results/NAME.json")
    return p.parse_args(argv)


def bleu_scores(hypotheses, references):
    ours = corpus_bleu(hypotheses, references)
    theirs = sacrebleu.corpus_bleu(hypotheses, [references]).score
    return round(ours, 2), round(theirs, 2)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    directory = args.data or multi30k_dir()
    if directory is None:
        sys.exit("Multi30k not found: pass --data DIR or set MLSCRATCH_MULTI30K")
    data = load_multi30k(directory)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, vocab_path = out / "checkpoint.pt", out / "bpe.json"

    ckpt = None
    if args.resume and ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path, CHECKPOINT_FORMAT, CHECKPOINT_KEYS)
        except ValueError as err:  # e.g. a run directory of an older format
            sys.exit(f"error: {err}")
    if ckpt is None and not args.resume:  # a fresh run: its own vocabulary and log
        for stale in (vocab_path, out / "history.jsonl"):
            stale.unlink(missing_ok=True)
    if vocab_path.exists():
        tokenizer = BPETokenizer.load(vocab_path)
    else:
        start = time.perf_counter()
        tokenizer = train_joint_bpe(data["train"], args.vocab_size)
        tokenizer.save(vocab_path)
        print(f"{tokenizer} learned in {time.perf_counter() - start:.1f} s")
    pad_id, bos_id, eos_id = special_ids(tokenizer)
    train_ids = encode_pairs(tokenizer, data["train"])
    val_ids = encode_pairs(tokenizer, data["val"])
    test = data["test_2016_flickr"][: args.eval_sentences or None]
    sources, references = [en for en, _ in test], [de for _, de in test]

    if ckpt is not None:
        model = model_from_checkpoint(ckpt, args.device)
        config = train_config_from_dict(ckpt["train_config"])
    else:
        V = tokenizer.vocab_size
        model = Transformer(
            TransformerConfig(
                src_vocab_size=V,
                tgt_vocab_size=V,
                d_model=args.d_model,
                n_heads=args.n_heads,
                d_ff=args.d_ff,
                n_layers=args.n_layers,
                dropout=args.dropout,
                max_len=256,
                pad_id=pad_id,
                norm_first=args.norm_first,
            ),
            seed=args.seed,
        )
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    trainer = Trainer(
        model,
        train_ids,
        config,
        pad_id=pad_id,
        bos_id=bos_id,
        eos_id=eos_id,
        device=args.device,
        out_dir=out,
        vocab_path=vocab_path,
        progress=not args.no_progress,
    )
    if ckpt is not None:
        trainer.restore(ckpt)
        print(f"resumed at update {trainer.step}, {trainer.elapsed / 60:.1f} min of training")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{n_params / 1e6:.2f} M parameters, {len(train_ids)} training pairs, "
        f"device {args.device}, {torch.get_num_threads()} threads"
    )

    def evaluate(beam_size=1):
        start = time.perf_counter()
        val_loss = trainer.evaluate(val_ids)
        hyps = translate(
            trainer.model,
            tokenizer,
            sources,
            bos_id,
            eos_id,
            beam_size=beam_size,
            batch_size=args.eval_batch,
        )
        ours, theirs = bleu_scores(hyps, references)
        train = [r["train_loss"] for r in trainer.history if "train_loss" in r]
        row = {
            "minutes": round(trainer.elapsed / 60, 2),
            "step": trainer.step,
            "epoch": trainer.data.epoch,
            "train_loss": round(train[-1], 4) if train else None,
            "val_loss": round(val_loss, 4),
            "decoding": "greedy" if beam_size == 1 else f"beam {beam_size}",
            "bleu": ours,
            "sacrebleu": theirs,
            "eval_seconds": round(time.perf_counter() - start, 1),
        }
        trainer.history.append({**row, "eval": True})
        trainer.save(ckpt_path)
        print(row, flush=True)
        return row, hyps

    total, every = args.minutes * 60, args.eval_every_minutes * 60
    while trainer.elapsed < total and (config.max_iters is None or trainer.step < config.max_iters):
        next_eval = min(total, (math.floor(trainer.elapsed / every + 1e-9) + 1) * every)
        steps_before = trainer.step
        trainer.train(max_seconds=next_eval - trainer.elapsed)
        if trainer.step > steps_before:
            evaluate()
    if not any(
        r.get("eval") and r["step"] == trainer.step and r["decoding"] == "greedy"
        for r in trainer.history
    ):
        evaluate()  # e.g. resumed after the last training step
    final, hyps = evaluate(args.beam_size)
    (out / "test_translations.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")

    rows = [
        {
            k: r[k]
            for k in (
                "minutes",
                "step",
                "epoch",
                "train_loss",
                "val_loss",
                "decoding",
                "bleu",
                "sacrebleu",
                "eval_seconds",
            )
        }
        for r in trainer.history
        if r.get("eval")
    ]
    logs = [r for r in trainer.history if "tokens_per_s" in r]
    tps = sum(r["tokens_per_s"] for r in logs[-20:]) / max(1, len(logs[-20:]))
    c = model.config
    notes = (
        f"Multi30k en->de, {len(train_ids)} training pairs, joint byte-level BPE of "
        f"{tokenizer.vocab_size} tokens; d_model {c.d_model}, {c.n_heads} heads, d_ff "
        f"{c.d_ff}, {c.n_layers}+{c.n_layers} layers, dropout {c.dropout}, "
        f"{'pre' if c.norm_first else 'post'}-norm, {n_params / 1e6:.2f} M parameters; "
        f"batches of {config.batch_tokens} tokens x {config.gradient_accumulation_steps}, "
        f"{config.schedule} schedule, learning_rate {config.learning_rate}, warmup_iters "
        f"{config.warmup_iters}, grad_clip {config.grad_clip}, label_smoothing "
        f"{config.label_smoothing}. Training time {trainer.elapsed / 60:.1f} min on {args.device} "
        f"({torch.get_num_threads()} threads), about {tps:,.0f} tokens/s (source + target) "
        f"at the end. BLEU on {len(sources)} sentences of test_2016_flickr, detokenized "
        f"output vs raw references: ours (mlscratch.text.bleu) and sacreBLEU "
        f"{sacrebleu.__version__} side by side; greedy at each evaluation, beam "
        f"{args.beam_size} (alpha 0.6) at the end: {final['bleu']} / {final['sacrebleu']}. "
        f"Peak memory {peak_memory_mb():.0f} MiB."
    )
    save(args.name, rows, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
