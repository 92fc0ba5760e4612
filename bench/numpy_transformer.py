"""Training throughput of the NumPy Transformer (Part I) on the standard configuration.

d_model 128, 4 heads, d_ff 512, 2 encoder + 2 decoder layers, batch 32 of length 32,
vocabularies of 1000. Reports target tokens per second for one full training step
(forward, loss, backward, clipping, Adam), the model FLOP rate against the machine's
measured float32 matmul peak, and peak memory. When the PyTorch model of Part II is
installed it is timed in the same run on the same configuration and the ratio reported.

    python bench/numpy_transformer.py [--steps 20]
"""

import argparse
import time

import numpy as np
from common import peak_memory_mb, save

from mlscratch.numpy_transformer.model import Transformer, TransformerConfig
from mlscratch.numpy_transformer.training import Adam, Batch, LabelSmoothingLoss, train_step

CONFIG = dict(
    src_vocab_size=1000,
    tgt_vocab_size=1000,
    d_model=128,
    n_heads=4,
    d_ff=512,
    n_layers=2,
    dropout=0.1,
    max_len=64,
)
B, L = 32, 32


def train_flops(c, B, S, T):
    """Matmul FLOPs of one training step (forward + backward = 3x forward)."""
    d, f = c["d_model"], c["d_ff"]
    enc = B * S * (2 * 4 * d * d + 2 * 2 * d * f) + B * 2 * 2 * S * S * d
    dec = B * T * (2 * 8 * d * d + 2 * 2 * d * f) + B * 2 * 2 * (T * T + T * S) * d
    out = B * T * 2 * d * c["tgt_vocab_size"]
    return 3 * (c["n_layers"] * (enc + dec) + out)


def batch(rng):
    src = rng.integers(3, 1000, (B, L))
    tgt = rng.integers(3, 1000, (B, L + 1))
    return Batch(src, tgt[:, :-1], tgt[:, 1:])


def time_numpy(steps, rng):
    model = Transformer(TransformerConfig(**CONFIG), seed=0)
    loss_fn, opt = LabelSmoothingLoss(0.1, ignore_index=0), Adam(model)
    data = [batch(rng) for _ in range(4)]
    train_step(model, loss_fn, opt, data[0], 1e-4, 1.0)  # warm-up
    times = []
    for i in range(steps):
        start = time.perf_counter()
        train_step(model, loss_fn, opt, data[i % 4], 1e-4, 1.0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak():
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    a @ a
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * 1024**3 / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    flops = train_flops(CONFIG, B, L, L)
    peak = matmul_peak()
    rows = []
    t = time_numpy(args.steps, rng)
    rows.append(
        {
            "model": "NumPy (Part I)",
            "ms/step": round(1000 * t, 1),
            "target tokens/s": round(B * L / t),
            "GFLOP/s": round(flops / t / 1e9, 1),
            "of fp32 peak": f"{flops / t / peak:.0%}",
        }
    )
    save(
        "numpy_transformer",
        rows,
        notes=(
            f"d_model 128, 4 heads, d_ff 512, 2+2 layers, batch {B}x{L}; "
            f"{flops / 1e9:.2f} GFLOP per step; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
            f"(1024x1024, same run); peak memory {peak_memory_mb():.0f} MiB. "
            "The PyTorch model of Part II is not built yet."
        ),
    )


if __name__ == "__main__":
    main()
