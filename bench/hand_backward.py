"""Does GPTConfig.hand_backward pay inside a training step? nanoGPT's CPU configuration.

One model and our AdamW in one process, one thread; blocks of 5 steps with hand_backward
off and on, interleaved (the order alternates), after 3 warm-up steps each, for each form
of the GELU. Prints and saves (bench/results/hand_backward.json) the median milliseconds
per step of both and their ratio.

    OMP_NUM_THREADS=1 python bench/hand_backward.py [--gelu tanh exact] [--steps 50]
"""

import argparse
import statistics
import time

import torch
from common import save

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.llm.optim import AdamW


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gelu", nargs="+", default=["tanh", "exact"], choices=("tanh", "exact"))
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(gelu, args.steps) for gelu in args.gelu]
    save(
        "hand_backward",
        rows,
        notes=f"nanoGPT's CPU configuration (4 layers, 4 heads, 128 wide, block 64, batch 12, "
        f"bias off), one thread; {args.steps} steps each way, interleaved in blocks of 5.",
    )


def measure(gelu, steps):
    """Median ms per training step with hand_backward off and on, interleaved."""
    torch.manual_seed(1337)
    cfg = GPTConfig(
        vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False, gelu=gelu
    )
    model = GPT(cfg)
    opt = AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, 65, (12, 65), generator=g)
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {False: [], True: []}
    for hand in times:
        model.config.hand_backward = hand
        for _ in range(3):
            step()
    for block in range(steps // 5):
        for hand in (False, True) if block % 2 == 0 else (True, False):
            model.config.hand_backward = hand
            for _ in range(5):
                start = time.perf_counter()
                step()
                times[hand].append(time.perf_counter() - start)
    off, on = (1e3 * statistics.median(times[h]) for h in (False, True))
    return {
        "gelu": gelu,
        "autograd ms": round(off, 1),
        "hand_backward ms": round(on, 1),
        "speed-up": f"{off / on:.2f}x",
    }


if __name__ == "__main__":
    main()
