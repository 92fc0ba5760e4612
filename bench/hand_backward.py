"""Does GPTConfig.hand_backward pay inside a training step? nanoGPT's CPU configuration.

One model and one AdamW optimizer in one process, one thread; blocks of 5 steps with
hand_backward off and on, interleaved (the order alternates), after 3 warm-up steps each.
Prints the median and mean milliseconds per step of both and their ratio.

    OMP_NUM_THREADS=1 python bench/hand_backward.py [--gelu tanh|exact] [--steps 50]
"""

import argparse
import statistics
import time

import torch

from mlscratch.llm.gpt import GPT, GPTConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gelu", default="tanh", choices=("tanh", "exact"))
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1337)
    cfg = GPTConfig(
        vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False, gelu=args.gelu
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
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
    for block in range(args.steps // 5):
        for hand in (False, True) if block % 2 == 0 else (True, False):
            model.config.hand_backward = hand
            for _ in range(5):
                start = time.perf_counter()
                step()
                times[hand].append(time.perf_counter() - start)
    off, on = (statistics.median(times[h]) for h in (False, True))
    print(
        f"gelu={args.gelu}: autograd {1e3 * off:.1f} ms/step, hand_backward {1e3 * on:.1f} "
        f"ms/step (medians of {len(times[True])}), {off / on:.3f}x; means "
        f"{1e3 * statistics.mean(times[False]):.1f} / {1e3 * statistics.mean(times[True]):.1f}"
    )


if __name__ == "__main__":
    main()
