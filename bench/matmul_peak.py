"""Measure the machine's matrix-multiply throughput: the yardstick for FLOP utilization.

Times square matmuls in NumPy (float32, float64) and PyTorch (float32, bfloat16) and
reports GFLOP/s (2 n^3 floating-point operations per product). Usage:
    python bench/matmul_peak.py [--sizes 512 1024 2048]
"""

import argparse

import numpy as np
import torch
from common import best_time, save


def gflops(n, seconds):
    return round(2 * n**3 / seconds / 1e9, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        for dtype in (np.float32, np.float64):
            a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
            t = best_time(lambda a=a: a @ a)
            rows.append(
                {"library": "numpy", "dtype": np.dtype(dtype).name, "n": n, "GFLOP/s": gflops(n, t)}
            )
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(n, n, dtype=dtype)
            t = best_time(lambda a=a: a @ a)
            rows.append(
                {
                    "library": "torch",
                    "dtype": str(dtype).removeprefix("torch."),
                    "n": n,
                    "GFLOP/s": gflops(n, t),
                }
            )
    save("matmul_peak", rows, notes=f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
