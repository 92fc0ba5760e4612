"""GPT (Part IV): generation with and without the KV cache, beside transformers' generate
with the same weights; forward+backward throughput beside the same model built from
torch.nn layers and F.scaled_dot_product_attention (our fused and hand-written paths, and
both models under torch.compile for reference). Rounds are interleaved so that the
machine's load falls on every candidate alike; each figure is the best of its rounds."""

import os

import torch
import torch.nn.functional as F
import transformers
from common import best_time, save
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from mlscratch.llm.gpt import GPT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()
torch.manual_seed(0)
NEW = 256
hf = GPT2LMHeadModel(
    GPT2Config(
        vocab_size=4096,
        n_positions=512,
        n_layer=4,
        n_head=4,
        n_embd=256,
        attn_implementation="sdpa",
    )
).eval()
ours = GPT.from_hf(hf).eval()
prompt = torch.randint(0, 4096, (1, 16))


def ours_gen(use_cache, fused=False):
    ours.config.fused = fused
    try:
        return ours.generate(prompt, NEW, top_k=1, use_cache=use_cache)
    finally:
        ours.config.fused = False


def hf_gen():
    return hf.generate(
        prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0
    )


assert torch.equal(ours_gen(True), hf_gen()), "greedy tokens differ from transformers'"
assert torch.equal(ours_gen(True, fused=True), hf_gen()), "fused tokens differ"
gen = {}
for _ in range(2):  # interleaved rounds, best of each
    for name, fn in [
        ("cache", lambda: ours_gen(True)),
        ("fused", lambda: ours_gen(True, True)),
        ("hf", hf_gen),
    ]:
        gen[name] = min(gen.get(name, float("inf")), best_time(fn, 2))
gen["full"] = best_time(lambda: ours_gen(False), 1)
rows = [
    {
        "what": f"generate {NEW} tokens, KV cache",
        "seconds": round(gen["cache"], 3),
        "tokens/s": round(NEW / gen["cache"], 1),
        "ratio": f"{gen['hf'] / gen['cache']:.2f} (vs transformers)",
    },
    {
        "what": f"generate {NEW} tokens, KV cache, fused",
        "seconds": round(gen["fused"], 3),
        "tokens/s": round(NEW / gen["fused"], 1),
        "ratio": f"{gen['hf'] / gen['fused']:.2f} (vs transformers)",
    },
    {
        "what": f"generate {NEW} tokens, no cache",
        "seconds": round(gen["full"], 3),
        "tokens/s": round(NEW / gen["full"], 1),
        "ratio": f"{gen['full'] / gen['cache']:.2f} (cache speed-up)",
    },
    {
        "what": f"transformers generate {NEW} tokens (SDPA)",
        "seconds": round(gen["hf"], 3),
        "tokens/s": round(NEW / gen["hf"], 1),
        "ratio": "1.00",
    },
]


class RefBlock(nn.Module):
    """GPT-2 block from torch.nn layers and SDPA: the reference for training speed."""

    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, V, T, L, C, H):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(RefBlock(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


B, T = 8, 256
x = torch.randint(0, 4096, (B, T))
ref = RefGPT(4096, 512, 4, 256, 4)


def train_step(fn):
    def step():
        loss = fn()
        loss.backward()

    return step


ours.train()
compiled_ours, compiled_ref = torch.compile(ours), torch.compile(ref)


def run_ours(model, fused):
    def loss():
        ours.config.fused = fused
        return model(x, x)[1]

    return loss


candidates = {
    "torch.nn + SDPA": lambda: ref(x, x),
    "ours, fused": run_ours(ours, True),
    "ours, hand-written": run_ours(ours, False),
    "ours, fused + torch.compile": run_ours(compiled_ours, True),
    "torch.nn + SDPA + torch.compile": lambda: compiled_ref(x, x),
}
for fn in candidates.values():  # warm-up; compiles the compiled ones
    train_step(fn)()
timings, names = {}, list(candidates)
for r in range(5):  # interleaved rounds in a rotating order, best of each
    for name in names[r % len(names) :] + names[: r % len(names)]:
        fn = candidates[name]
        timings[name] = min(timings.get(name, float("inf")), best_time(train_step(fn), 3))
t_ref = timings["torch.nn + SDPA"]
for name, t in timings.items():
    rows.append(
        {
            "what": f"fwd+bwd {B}x{T} tokens, {name}",
            "seconds": round(t, 3),
            "tokens/s": round(B * T / t),
            "ratio": f"{t_ref / t:.2f} (vs torch.nn)",
        }
    )
save(
    "gpt",
    rows,
    notes=f"4-layer GPT-2 layout, n_embd 256, vocab 4096, float32, CPU threads "
    f"{torch.get_num_threads()}; greedy decoding, same tokens as transformers; "
    f"load average at the end {os.getloadavg()[0]:.1f}",
)
