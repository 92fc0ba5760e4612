"""Training throughput of the PyTorch Transformer (Part III) beside nn.Transformer and NumPy.

Standard configuration of bench/numpy_transformer.py: d_model 128, 4 heads, d_ff 512,
2 encoder + 2 decoder layers, batch 32 of length 32, vocabularies of 1000, dropout 0.1.
Three models train in the same process, their steps interleaved (in a rotating order) so
that the machine's load affects all alike: ours (basic tensor ops and autograd), the same
architecture built from torch.nn layers (nn.Embedding, nn.Transformer, tied output projection), and
Part I's NumPy model. Both PyTorch models use the same loss (label smoothing 0.1, padding
ignored), gradient clipping at 1.0 and torch.optim.Adam.

    python bench/torch_transformer.py [--steps 20] [--threads N]
"""

import argparse
import math
import time

import numpy as np
import torch
from common import peak_memory_mb, save
from torch import nn
from torch.nn import functional as F  # the reference model and the loss only

from mlscratch.numpy_transformer.model import Transformer as NumpyTransformer
from mlscratch.numpy_transformer.training import Adam, Batch, LabelSmoothingLoss, train_step
from mlscratch.torch_transformer import Transformer, TransformerConfig
from mlscratch.torch_transformer.layers import sinusoidal_positions

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


class TorchNNTransformer(nn.Module):
    """The same architecture from torch.nn's layers: the reference for throughput."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.register_buffer("pe", sinusoidal_positions(c.max_len, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(
            c.d_model,
            c.n_heads,
            c.n_layers,
            c.n_layers,
            c.d_ff,
            c.dropout,
            batch_first=True,
            norm_first=c.norm_first,
        )
        if not c.norm_first:  # post-norm: no final LayerNorms, as in our model
            self.transformer.encoder.norm = self.transformer.decoder.norm = None

    def embed(self, emb, ids):
        return self.drop(emb(ids) * math.sqrt(self.c.d_model) + self.pe[: ids.shape[1]])

    def forward(self, src, tgt):
        T = tgt.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        pad = self.c.pad_id
        h = self.transformer(
            self.embed(self.src_embed, src),
            self.embed(self.tgt_embed, tgt),
            tgt_mask=~causal,
            src_key_padding_mask=src == pad,
            tgt_key_padding_mask=tgt == pad,
            memory_key_padding_mask=src == pad,
        )
        return h @ self.tgt_embed.weight.T


def torch_stepper(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    def step(batch):
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            tgt_out.reshape(-1),
            ignore_index=0,
            label_smoothing=0.1,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def numpy_stepper(config):
    model = NumpyTransformer(config, seed=0)
    loss_fn, opt = LabelSmoothingLoss(0.1, ignore_index=0), Adam(model)
    return lambda batch: train_step(model, loss_fn, opt, Batch(*batch), 1e-4, 1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TransformerConfig(**CONFIG)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = []
    for _ in range(4):
        src, tgt = rng.integers(3, 1000, (B, L)), rng.integers(3, 1000, (B, L + 1))
        data.append((src, tgt[:, :-1], tgt[:, 1:]))
    torch_data = [tuple(torch.from_numpy(a) for a in batch) for batch in data]
    steppers = {
        "PyTorch, ours (Part III)": (torch_stepper(Transformer(config)), torch_data),
        "PyTorch, nn.Transformer": (torch_stepper(TorchNNTransformer(config)), torch_data),
        "NumPy (Part I)": (numpy_stepper(config), data),
    }
    times = {name: [] for name in steppers}
    for step, batches in steppers.values():  # warm-up
        step(batches[0])
    names = list(steppers)
    for i in range(args.steps):
        # rotate the order: BLAS threads may keep spinning for a while after a step, so
        # the model that runs right after another one's step pays for it; each takes turns
        for name in names[i % 3 :] + names[: i % 3]:
            step, batches = steppers[name]
            start = time.perf_counter()
            step(batches[i % 4])
            times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    ref = median["PyTorch, nn.Transformer"]
    rows = [
        {
            "model": name,
            "ms/step": round(1000 * t, 1),
            "target tokens/s": round(B * L / t),
            "vs nn.Transformer": f"{ref / t:.2f}x",
        }
        for name, t in median.items()
    ]
    ours = median["PyTorch, ours (Part III)"]
    save(
        "torch_transformer",
        rows,
        notes=(
            f"d_model 128, 4 heads, d_ff 512, 2+2 layers, dropout 0.1, batch {B}x{L}; median of "
            f"{args.steps} interleaved steps; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads. Ours / nn.Transformer throughput: "
            f"{ref / ours:.2f}x (target 0.8x); "
            f"NumPy / ours: {ours / median['NumPy (Part I)']:.2f}x "
            f"(Part I's target 0.7x). Peak memory {peak_memory_mb():.0f} MiB."
        ),
    )


if __name__ == "__main__":
    main()
