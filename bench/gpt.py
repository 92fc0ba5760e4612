"""GPT (Part III): generation with and without the KV cache, beside transformers' generate
with the same weights; forward+backward throughput beside the same model built from
torch.nn layers and F.scaled_dot_product_attention (our fused and hand-written paths)."""

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
hf = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=512, n_layer=4, n_head=4,
                                n_embd=256, attn_implementation="sdpa")).eval()
ours = GPT.from_hf(hf).eval()
prompt = torch.randint(0, 4096, (1, 16))


def ours_gen(use_cache):
    return ours.generate(prompt, NEW, top_k=1, use_cache=use_cache)


def hf_gen():
    return hf.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                       pad_token_id=0)


assert torch.equal(ours_gen(True), hf_gen()), "greedy tokens differ from transformers'"
t_cache, t_full = best_time(lambda: ours_gen(True), 3), best_time(lambda: ours_gen(False), 1)
t_hf = best_time(hf_gen, 3)
rows = [
    {"what": f"generate {NEW} tokens, KV cache", "seconds": round(t_cache, 3),
     "tokens/s": round(NEW / t_cache, 1), "ratio": "1.00"},
    {"what": f"generate {NEW} tokens, no cache", "seconds": round(t_full, 3),
     "tokens/s": round(NEW / t_full, 1), "ratio": f"{t_full / t_cache:.2f} (cache speed-up)"},
    {"what": f"transformers generate {NEW} tokens", "seconds": round(t_hf, 3),
     "tokens/s": round(NEW / t_hf, 1), "ratio": f"{t_hf / t_cache:.2f} (ours faster if > 1)"},
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


t_ref = best_time(train_step(lambda: ref(x, x)), 5)
ours.train()
ours.config.fused = True
t_fused = best_time(train_step(lambda: ours(x, x)[1]), 5)
ours.config.fused = False
t_hand = best_time(train_step(lambda: ours(x, x)[1]), 5)
timings = {"torch.nn + SDPA": t_ref, "ours, fused": t_fused, "ours, hand-written": t_hand}
for name, t in timings.items():
    rows.append({"what": f"fwd+bwd {B}x{T} tokens, {name}", "seconds": round(t, 3),
                 "tokens/s": round(B * T / t), "ratio": f"{t_ref / t:.2f} (vs torch.nn)"})
save("gpt", rows, notes=f"4-layer GPT-2 layout, n_embd 256, vocab 4096, float32, CPU threads "
                        f"{torch.get_num_threads()}; greedy decoding, same tokens as transformers; "
                        f"load average at the end {os.getloadavg()[0]:.1f}")
