"""BPE tokenizer on Tiny Shakespeare, vocabulary 4096: training and encoding time beside
HF `tokenizers` and `tiktoken` (same ranks) in the same process, peak memory, and a
minbpe-style baseline that recounts every pair at each merge (timed on a few merges and
extrapolated)."""

import os
import sys
import time
import tracemalloc
from pathlib import Path

from common import best_time, peak_memory_mb, save
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mlscratch.llm.bpe import PreTokenizer, train_merges_naive
from mlscratch.llm.tokenizer import BPETokenizer

VOCAB = 4096
ROOT = Path(__file__).resolve().parents[1]
folder = Path(os.environ.get("MLSCRATCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
path = folder / "tinyshakespeare.txt"
if not path.is_file():
    sys.exit(f"{path} not found: set MLSCRATCH_SHARED_DATA to the folder holding it")
text = path.read_text(encoding="utf-8")
n_bytes = len(text.encode("utf-8"))


def hf_train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text], trainer)
    return tok


def ours_train(pattern="gpt2"):
    return BPETokenizer.train(text, VOCAB, pattern=pattern)


# Training, alternating the two so that both see the same machine load.
hf_tok, ours = hf_train(), ours_train()
hf_train_s = best_time(hf_train, repeat=5)
ours_train_s = best_time(ours_train, repeat=5)
ours_gpt4_s = best_time(lambda: ours_train("gpt4"), repeat=3)

# Encoding the whole file as one string, with the same 4096 ranks in all three.
enc = ours.to_tiktoken()
assert enc.encode(text) == ours.encode(text), "tiktoken and ours disagree"


def ours_cold():
    ours._cache.clear()  # a fresh tokenizer: every distinct pre-token is merged once
    return ours.encode(text)


ours_cold_s = best_time(ours_cold)
ours_warm_s = best_time(lambda: ours.encode(text))
hf_encode_s = best_time(lambda: hf_tok.encode(text))
tiktoken_s = best_time(lambda: enc.encode(text))

# Python heap at its peak while training (tracemalloc slows it down, so it is not timed).
tracemalloc.start()
ours_train()
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()

# minbpe-style: recount all pairs over every pre-token (not deduplicated) at each merge.
pieces = PreTokenizer("gpt2").split(text)
k = 5
start = time.perf_counter()
train_merges_naive(pieces, 256 + k)
per_merge = (time.perf_counter() - start) / k
naive_s = per_merge * (VOCAB - 256)


def r(x):
    return round(x, 3)


rows = [
    {
        "task": "train, vocab 4096 (GPT-2 pattern)",
        "ours (s)": r(ours_train_s),
        "reference": "HF tokenizers BpeTrainer",
        "reference (s)": r(hf_train_s),
        "ours / reference": r(ours_train_s / hf_train_s),
    },
    {
        "task": "train, vocab 4096 (GPT-4 pattern)",
        "ours (s)": r(ours_gpt4_s),
        "reference": "HF tokenizers (GPT-2 pattern)",
        "reference (s)": r(hf_train_s),
        "ours / reference": r(ours_gpt4_s / hf_train_s),
    },
    {
        "task": "train, minbpe-style baseline (extrapolated)",
        "ours (s)": r(naive_s),
        "reference": "HF tokenizers BpeTrainer",
        "reference (s)": r(hf_train_s),
        "ours / reference": r(naive_s / hf_train_s),
    },
    {
        "task": "encode whole file, cold cache",
        "ours (s)": r(ours_cold_s),
        "reference": "HF tokenizers encode",
        "reference (s)": r(hf_encode_s),
        "ours / reference": r(ours_cold_s / hf_encode_s),
    },
    {
        "task": "encode whole file, cold cache",
        "ours (s)": r(ours_cold_s),
        "reference": "tiktoken, same ranks",
        "reference (s)": r(tiktoken_s),
        "ours / reference": r(ours_cold_s / tiktoken_s),
    },
    {
        "task": "encode whole file, warm cache",
        "ours (s)": r(ours_warm_s),
        "reference": "tiktoken, same ranks",
        "reference (s)": r(tiktoken_s),
        "ours / reference": r(ours_warm_s / tiktoken_s),
    },
]
notes = (
    f"Tiny Shakespeare ({n_bytes:,} bytes), vocabulary {VOCAB}; medians of best_time runs, "
    f"ours and the references one after the other in one process. Our training reaches a "
    f"Python-heap peak of {peak / 2**20:.0f} MiB (tracemalloc); the whole process peaked at "
    f"{peak_memory_mb():.0f} MiB resident (HF and tiktoken included). The minbpe-style "
    f"baseline was timed on {k} merges ({per_merge:.2f} s each) and extrapolated to "
    f"{VOCAB - 256} merges. Our encoding equals tiktoken's ids; HF's merges equal ours. "
    f"HF's trainer and encoder use both cores, ours one; the machine's load average was "
    f"{os.getloadavg()[0]:.1f} at the end (shared with other jobs)."
)
save("tokenizer", rows, notes)
print(notes)
