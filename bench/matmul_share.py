"""How much of a nanoGPT run is matrix products: the ceiling on a speed-up over it.

nanoGPT's own model (model.py of a checkout, `torch.optim.AdamW`) and ours (`GPT` with
the hand-written backward passes, eager and compiled, our AdamW) on nanoGPT's README CPU
configuration, one thread, in this process: a training step (forward, backward,
clipping, the optimizer) and an evaluation forward, each timed (median of --iters after
warm-up) and then profiled (torch.profiler) to find the share of the self CPU time of
all its events spent in the matrix products (aten::mm, bmm, addmm; the products inside
nanoGPT's attention kernel are not counted, so the share is a lower bound). A run of the
benchmark's configuration is 2,000 steps and 3,600 evaluation forwards (9 evaluations of
2 splits x 200 batches). A program that spent no time at all outside the same matrix
products would be faster than nanoGPT by at most run time / matrix-product time: the
ceiling column.

    python bench/matmul_share.py --nanogpt PATH [--iters 40]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import save
from torch.profiler import profile

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import AdamW, clip_grad_norm, configure_param_groups

SIZES = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False)
B, STEPS, EVALS = 12, 2000, 3600
MATMUL = ("aten::mm", "aten::bmm", "aten::addmm")


def nanogpt(path):
    """nanoGPT's model and optimizer, as its train.py builds them on a CPU."""
    sys.path.insert(0, str(path))
    import model as nano  # noqa: PLC0415 (from the checkout given on the command line)

    torch.manual_seed(1337)
    m = nano.GPT(nano.GPTConfig(dropout=0.0, **SIZES))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    return m, m, opt, lambda: torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)


def ours(compiled):
    torch.manual_seed(1337)
    m = GPT(GPTConfig(gelu="exact", hand_backward=True, **SIZES))
    opt = AdamW(configure_param_groups(m, 0.1), lr=1e-3, betas=(0.9, 0.99))
    net = torch.compile(m) if compiled else m
    return m, net, opt, lambda: clip_grad_norm(m.parameters(), 1.0)


def measure(setup, batches, iters):
    """(step ms, eval ms, matmul share of a step, of an evaluation)."""
    model, net, opt, clip = setup

    def step(x, y):
        _, loss = net(x, y)
        loss.backward()
        clip()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(x, y):
        net.eval()
        net(x, y)
        net.train()

    out = []
    for fn in (step, evaluate):
        for x, y in batches[:5]:
            fn(x, y)  # warm up (and compile)
        times = []
        for x, y in batches[:iters]:
            start = time.perf_counter()
            fn(x, y)
            times.append(time.perf_counter() - start)
        out.append(1e3 * statistics.median(times))
    for fn in (step, evaluate):
        with profile() as prof:
            for x, y in batches[:10]:
                fn(x, y)
        events = prof.key_averages()  # self times add up to the whole (compiled kernels too)
        total = sum(e.self_cpu_time_total for e in events)
        out.append(sum(e.self_cpu_time_total for e in events if e.key in MATMUL) / total)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = torch.randint(0, 65, (args.iters, B, 65), generator=torch.Generator().manual_seed(0))
    batches = [(d[:, :-1], d[:, 1:].contiguous()) for d in data]
    programs = {
        "nanoGPT (model.py, fused kernels)": lambda: nanogpt(args.nanogpt),
        "ours, hand-written backward passes": lambda: ours(False),
        "ours, the same compiled": lambda: ours(True),
    }
    rows = []
    for name, make in programs.items():
        step, ev, share_step, share_eval = measure(make(), batches, args.iters)
        run_s = (STEPS * step + EVALS * ev) / 1e3
        matmul_s = (STEPS * step * share_step + EVALS * ev * share_eval) / 1e3
        rows.append({"program": name, "step ms": round(step, 1), "eval ms": round(ev, 1),
                     "matmul % step": round(100 * share_step), "matmul % eval":
                     round(100 * share_eval), "run s": round(run_s), "matmul s":
                     round(matmul_s), "ceiling": f"{run_s / matmul_s:.2f}x"})  # fmt: skip
    base = rows[0]["run s"]
    for row in rows:
        row["vs nanoGPT"] = f"{base / row['run s']:.2f}x"
    save(
        "matmul_share",
        rows,
        notes=f"nanoGPT's README CPU configuration, one thread, torch {torch.__version__}; "
        f"run = {STEPS} steps + {EVALS} evaluation forwards of {B} x 64 tokens (compilation "
        f"not counted); ceiling = run s / matmul s.",
    )


if __name__ == "__main__":
    main()
