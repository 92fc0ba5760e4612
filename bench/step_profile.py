"""Where one training step of the Tiny Shakespeare model spends its time: ours and torch.nn.

The model and optimizer of bench/shakespeare_char.py (nanoGPT's CPU configuration), one
step at a time: forward, backward, gradient clipping, AdamW, timed with the wall clock in
interleaved rounds, then the operators of the whole step by self CPU time from
torch.profiler, grouped by kind. It explains the throughput ratio of shakespeare_char.py.

    python bench/step_profile.py [--rounds 6] [--iters 30]
"""

import argparse
import statistics
import time

import torch
from common import save
from shakespeare_char import BaselineGPT
from torch import nn
from torch.profiler import profile

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import AdamW, clip_grad_norm, configure_param_groups

V, T, B, L, H, C = 65, 64, 12, 4, 4, 128
PHASES = ("forward", "backward", "clip", "AdamW")
KINDS = {  # substrings of aten operator names -> kind
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm"),
    "attention": ("scaled_dot_product", "softmax"),
    "GELU": ("gelu", "tanh"),
    "norm": ("layer_norm", "rms_norm"),
}


def make(kind, fused=True):
    """(model, optimizer, clip) for the baseline or ours, with the same seed."""
    torch.manual_seed(0)
    if kind == "baseline":
        model = BaselineGPT(V, T, L, C, H, bias=False)
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=1e-3,
            betas=(0.9, 0.99),
        )
        return model, opt, lambda: nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    model = GPT(
        GPTConfig(
            vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, bias=False, fused=fused
        )
    )
    opt = AdamW(configure_param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99))
    return model, opt, lambda: clip_grad_norm(model.parameters(), 1.0)


def steps(setup, batches, times=None):
    """Train on each batch; add each phase's seconds to times."""
    model, opt, clip = setup
    for x, y in batches:
        marks = [time.perf_counter()]
        _, loss = model(x, y)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        clip()
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if times is not None:
            for phase, a, b in zip(PHASES, marks, marks[1:], strict=False):
                times[phase] += b - a


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=30, help="steps per model and round")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (args.iters, B, T + 1), generator=g)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    names = {
        "baseline": "baseline: torch.nn + SDPA + torch.optim.AdamW",
        "fused": "ours, fused",
        "hand": "ours, hand-written",
    }
    setups = {
        "baseline": make("baseline"),
        "fused": make("ours"),
        "hand": make("ours", fused=False),
    }
    for setup in setups.values():
        steps(setup, batches[:5])  # warm up
    per_round = {name: [] for name in setups}
    order = list(setups)
    for r in range(args.rounds):  # rotate the order: no model always runs after another
        for name in order[r % len(order) :] + order[: r % len(order)]:
            times = dict.fromkeys(PHASES, 0.0)
            steps(setups[name], batches, times)
            per_round[name].append({k: v / args.iters * 1e3 for k, v in times.items()})
    rows = []
    for name, setup in setups.items():
        with profile() as prof:
            steps(setup, batches)
        by_kind = dict.fromkeys([*KINDS, "other"], 0.0)
        for event in prof.key_averages():
            if not event.key.startswith("aten::"):
                continue
            kind = next(
                (k for k, keys in KINDS.items() if any(s in event.key for s in keys)), "other"
            )
            by_kind[kind] += event.self_cpu_time_total
        total = sum(by_kind.values())
        median = {p: statistics.median(r[p] for r in per_round[name]) for p in PHASES}
        step = statistics.median(sum(r.values()) for r in per_round[name])
        rows.append(
            {
                "run": names[name],
                "step ms": round(step, 1),
                **{f"{p} ms": round(median[p], 1) for p in PHASES},
                **{f"{k} %": round(100 * v / total) for k, v in by_kind.items()},
            }
        )
    base = rows[0]["step ms"]
    for row in rows:
        row["vs baseline"] = f"{base / row['step ms']:.2f}x"
    save(
        "step_profile",
        rows,
        notes=(
            f"One training step of nanoGPT's CPU Shakespeare model (batch {B} x {T} tokens): "
            f"median milliseconds per phase over {args.rounds} interleaved rounds of "
            f"{args.iters} steps; the % columns share out the self CPU time of the aten "
            f"operators of the whole step (torch.profiler), by kind. torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads."
        ),
    )


if __name__ == "__main__":
    main()
