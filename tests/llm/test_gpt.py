"""Chapter "A GPT from scratch": our GPT equals transformers' GPT-2 and Llama, logit for logit."""

import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from mlscratch.llm.gpt import GPT, GPTConfig, flops_per_token, num_params

transformers.logging.set_verbosity_error()
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def randomize(model, seed):
    """Weights far from the init (norm gains and biases too), so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (p.ndim == 1))
    return model


def hf_gpt2(seed, dtype, n_layer, n_head, head_dim, vocab, n_pos, tie=True, act="gelu_new"):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=n_pos,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_head * head_dim,
        tie_word_embeddings=tie,
        activation_function=act,
        attn_implementation="eager",
    )
    return randomize(GPT2LMHeadModel(cfg), seed).to(dtype).eval()


def hf_llama(seed, dtype, n_layer, n_head, n_kv, head_dim, vocab, n_pos, tie=False, bias=False):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=n_pos,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        hidden_size=n_head * head_dim,
        intermediate_size=3 * head_dim + 5,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    return randomize(LlamaForCausalLM(cfg), seed).to(dtype).eval()


@pytest.fixture
def llama_in_float64(monkeypatch, request):
    """transformers' Llama computes RMSNorm and softmax in float32 even for float64 weights.

    For the float64 comparison the reference keeps the dtype it is given; the formulas are
    unchanged. (RoPE's angles stay in float32 in both models, as in Llama.) The float32
    comparison runs against the unmodified model.
    """
    if request.node.callspec.params["dtype"] != torch.float64:
        return

    def rmsnorm(self, x):
        return self.weight * (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    def attention(module, q, k, v, mask, scaling, dropout=0.0, **kwargs):
        k = modeling_llama.repeat_kv(k, module.num_key_value_groups)
        v = modeling_llama.repeat_kv(v, module.num_key_value_groups)
        w = torch.matmul(q, k.transpose(2, 3)) * scaling
        if mask is not None:
            w = w + mask
        w = torch.softmax(w, dim=-1)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rmsnorm)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", attention)


def assert_same_logits(ours, hf, idx, dtype):
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert logits.dtype == dtype
    scale = expected.abs().max().item()
    assert scale > 0.1  # the comparison is not between near-zero numbers
    err = (logits - expected).abs().max().item() / scale
    assert err <= TOL[dtype], f"relative logit error {err:.2e} > {TOL[dtype]:.0e}"


# head_dim >= 4: LayerNorm over n_embd = 2 numbers is ill-conditioned (two nearly equal
# entries normalise to +-1 by rounding), so float32 rounding alone can exceed 1e-5 there.
# Derandomized: the same examples every run, so CI never meets a new one by chance.
shapes = dict(
    seed=st.integers(0, 10_000),
    n_layer=st.integers(1, 3),
    n_head=st.sampled_from([1, 2, 3, 5]),
    head_dim=st.sampled_from([4, 6, 8]),
    vocab=st.integers(5, 70),
    n_pos=st.integers(4, 24),
    batch=st.integers(1, 3),
    data=st.data(),
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=8, deadline=None, derandomize=True)
@given(**shapes, tie=st.booleans())
def test_gpt2_logits_equal_transformers(
    dtype, seed, n_layer, n_head, head_dim, vocab, n_pos, batch, data, tie
):
    hf = hf_gpt2(seed, dtype, n_layer, n_head, head_dim, vocab, n_pos, tie)
    ours = GPT.from_hf(hf).eval()
    T = data.draw(st.integers(1, n_pos), label="T")  # shorter than the context, or equal
    idx = torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))
    assert_same_logits(ours, hf, idx, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=4, deadline=None, derandomize=True)
@given(**shapes)
def test_gpt2_exact_gelu_logits_equal_transformers(
    dtype, seed, n_layer, n_head, head_dim, vocab, n_pos, batch, data
):
    """activation_function="gelu" (the erf form, nanoGPT's) loads as gelu="exact"."""
    hf = hf_gpt2(seed, dtype, n_layer, n_head, head_dim, vocab, n_pos, act="gelu")
    ours = GPT.from_hf(hf).eval()
    assert ours.config.gelu == "exact"
    T = data.draw(st.integers(1, n_pos), label="T")
    idx = torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))
    assert_same_logits(ours, hf, idx, dtype)


def test_gpt2_gelu_forms_and_unknown_activation():
    assert GPT.from_hf(hf_gpt2(0, torch.float32, 1, 2, 4, 10, 8)).config.gelu == "tanh"
    tanh = hf_gpt2(0, torch.float32, 1, 2, 4, 10, 8, act="gelu_pytorch_tanh")
    assert GPT.from_hf(tanh).config.gelu == "tanh"
    with pytest.raises(ValueError, match="GPT-2 activation must be one of .* got 'relu'"):
        GPT.from_hf(hf_gpt2(0, torch.float32, 1, 2, 4, 10, 8, act="relu"))


def test_gelu_forms():
    """The hand-written forms equal PyTorch's two GELUs; the two differ by < 1e-3."""
    from mlscratch.llm.gpt import gelu

    x = torch.linspace(-8, 8, 10001, dtype=torch.float64)
    assert torch.allclose(gelu(x), F.gelu(x, approximate="tanh"), rtol=0, atol=1e-14)
    assert torch.allclose(gelu(x, "exact"), F.gelu(x), rtol=0, atol=1e-14)
    assert 1e-4 < (gelu(x) - gelu(x, "exact")).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(**shapes, group=st.sampled_from([1, 2, 3]), tie=st.booleans(), bias=st.booleans())
def test_llama_logits_equal_transformers(
    llama_in_float64,
    dtype,
    seed,
    n_layer,
    n_head,
    head_dim,
    vocab,
    n_pos,
    batch,
    data,
    group,
    tie,
    bias,
):
    hf = hf_llama(seed, dtype, n_layer, n_head * group, n_head, head_dim, vocab, n_pos, tie, bias)
    ours = GPT.from_hf(hf).eval()
    assert ours.config.n_kv_head == n_head and ours.config.n_head == n_head * group
    T = data.draw(st.integers(1, n_pos), label="T")
    idx = torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))
    assert_same_logits(ours, hf, idx, dtype)


def test_from_state_dict_with_config():
    hf = hf_gpt2(1, torch.float64, 2, 2, 4, 30, 12)
    ours = GPT.from_hf(hf.state_dict(), hf.config).eval()
    assert_same_logits(ours, hf, torch.randint(0, 30, (2, 12)), torch.float64)


def test_loss_equals_torch_cross_entropy_with_ignored_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(0, 40, (3, 16))
    targets = torch.randint(0, 40, (3, 16))
    targets[0, :5] = -1
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, 40), targets.reshape(-1), ignore_index=-1)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    loss.backward()  # autograd flows through the hand-written operations
    assert all(p.grad is not None for p in model.parameters())


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=8, n_head=4, n_embd=128)
    model = GPT(cfg)
    std = model.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001
    assert torch.all(model.h[0].attn.c_attn.bias == 0) and torch.all(model.ln_f.weight == 1)


def test_parameter_count_formula_and_flops():
    V, T, L, C = 97, 32, 3, 24
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C))
    H = 4 * C
    total = V * C + T * C + L * (4 * C * C + 2 * C * H + 9 * C + H) + 2 * C
    assert num_params(model, non_embedding=False) == total
    assert num_params(model) == total - V * C - T * C
    assert flops_per_token(model, 10) == 6 * (total - V * C - T * C) + 12 * L * C * 10


def test_fused_path_equals_hand_written():
    """The same computation, fused: logits, loss and every gradient agree in float32 to
    1e-5 relative (the kernels sum in other orders, so not bit for bit)."""
    torch.manual_seed(0)
    for cfg in (
        GPTConfig(vocab_size=50, block_size=20, n_layer=2, n_head=3, n_embd=24),
        GPTConfig(vocab_size=50, block_size=20, n_layer=2, n_head=3, n_embd=24, gelu="exact"),
        GPTConfig.llama(vocab_size=50, block_size=20, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),
    ):
        model = randomize(GPT(cfg), 0).eval()
        idx = torch.randint(0, 50, (2, 13))
        targets = idx.roll(-1, dims=1)
        targets[0, -3:] = -1  # ignored positions
        results = {}
        for fused in (False, True):
            model.config.fused = fused
            model.zero_grad()
            logits, loss = model(idx, targets)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            results[fused] = logits.detach(), loss.detach(), grads
        (slow, slow_loss, slow_grads), (fast, fast_loss, fast_grads) = results[False], results[True]
        model.config.fused = False
        assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
        assert abs(fast_loss - slow_loss) <= 1e-5 * abs(slow_loss)
        for name, g in slow_grads.items():
            assert (fast_grads[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


HAND_CONFIGS = {
    "gpt2 tanh, bias": dict(gelu="tanh"),
    "gpt2 exact, no bias": dict(gelu="exact", bias=False),
    "gpt2, dropout": dict(dropout=0.2),
    "llama, grouped": dict(llama=True, n_head=4, n_kv_head=2),
}


@pytest.mark.parametrize("name", list(HAND_CONFIGS))
def test_hand_backward_equals_autograd(name):
    """hand_backward (every layer but the matrix products as an autograd Function): the
    same logits, loss and gradients as autograd on the elementary operations, float32 to
    1e-5 relative; with dropout both paths draw the same masks from the same seed."""
    options = dict(vocab_size=50, block_size=20, n_layer=2, n_head=3, n_embd=24)
    options.update(HAND_CONFIGS[name])
    cfg = GPTConfig.llama(**options) if options.pop("llama", False) else GPTConfig(**options)
    torch.manual_seed(0)
    model = randomize(GPT(cfg), 0).train()
    idx = torch.randint(0, 50, (2, 13))
    targets = idx.roll(-1, dims=1)
    targets[0, -3:] = -1
    results = {}
    for hand in (False, True):
        model.config.hand_backward = hand
        model.zero_grad()
        torch.manual_seed(1)
        logits, loss = model(idx, targets)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[hand] = logits.detach(), loss.detach(), grads
    (slow, slow_loss, slow_grads), (fast, fast_loss, fast_grads) = results[False], results[True]
    assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
    assert abs(fast_loss - slow_loss) <= 1e-5 * abs(slow_loss)
    for name, g in slow_grads.items():
        assert (fast_grads[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


def test_fused_path_with_cache_equals_full_recomputation():
    """SDPA with cached keys (one new query, then several) gives the uncached logits."""
    torch.manual_seed(0)
    cfg = GPTConfig.llama(
        vocab_size=40, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, fused=True
    )
    model = randomize(GPT(cfg), 1).eval()
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        parts = [
            model(idx[:, :5], cache=cache)[0],
            model(idx[:, 5:6], cache=cache)[0],
            model(idx[:, 6:], cache=cache)[0],
        ]
    assert torch.allclose(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5 * full.abs().max())


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_embd=10, n_head=3), "divisible by n_head"),
        (dict(n_head=6, n_kv_head=4, n_embd=24), "divisible by n_kv_head"),
        (dict(pos="alibi"), "pos must be one of"),
        (dict(gelu="erf"), "gelu must be one of"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
    ],
)
def test_bad_configurations(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**bad)


def test_bad_inputs():
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="B, T >= 1"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 20\)"):
        model(torch.full((1, 3), 20))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="targets must have"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_bad_state_dicts_name_the_tensors():
    hf = hf_gpt2(0, torch.float32, 2, 2, 4, 30, 12)
    state = dict(hf.state_dict())
    missing = {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]"):
        GPT.from_hf(missing, hf.config)
    with pytest.raises(ValueError, match=r"unexpected \['transformer.h.2.ln_1.weight'\]"):
        GPT.from_hf({**state, "transformer.h.2.ln_1.weight": torch.ones(8)}, hf.config)
    shaped = {**state, "transformer.h.0.attn.c_attn.weight": torch.ones(24, 8)}
    with pytest.raises(
        ValueError,
        match=r"transformer.h.0.attn.c_attn.weight: got \(24, 8\), "
        r"expected \(8, 24\)",
    ):
        GPT.from_hf(shaped, hf.config)
    llama = hf_llama(0, torch.float32, 1, 4, 2, 4, 30, 12)
    bad = {**llama.state_dict(), "model.layers.0.self_attn.k_proj.weight": torch.ones(16, 16)}
    with pytest.raises(ValueError, match=r"k_proj.weight: got \(16, 16\), expected \(8, 16\)"):
        GPT.from_hf(bad, llama.config)
    with pytest.raises(ValueError, match="needs its config"):
        GPT.from_hf(state)


def small(kind, dtype=torch.float32, block_size=24):
    torch.manual_seed(3)
    if kind == "gpt2":
        cfg = GPTConfig(vocab_size=37, block_size=block_size, n_layer=2, n_head=3, n_embd=24)
    else:
        cfg = GPTConfig.llama(
            vocab_size=37, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
        )
    return randomize(GPT(cfg), 3).to(dtype).eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kv_cache_logits_equal_full_recomputation(kind, dtype):
    model = small(kind, dtype)
    idx = torch.randint(0, 37, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        pieces = [model(idx[:, :5], cache=cache)[0]]  # a 5-token prompt, then one at a time
        pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 24)]
        with pytest.raises(ValueError, match="longer than the context"):
            model(idx[:, :1], cache=cache)  # the cache is full
    err = (torch.cat(pieces, dim=1) - full).abs().max() / full.abs().max()
    assert err <= TOL[dtype]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generation_with_and_without_cache_gives_the_same_tokens(kind):
    model = small(kind, torch.float64, block_size=12)
    prompt = torch.randint(0, 37, (3, 4), generator=torch.Generator().manual_seed(1))
    # 20 new tokens: past the 12-token context, where the window slides
    for options in (dict(), dict(temperature=0.7, top_k=5), dict(top_p=0.8, temperature=1.3)):
        a = model.generate(prompt, 20, seed=7, use_cache=True, **options)
        b = model.generate(prompt, 20, seed=7, use_cache=False, **options)
        assert a.shape == (3, 24) and torch.equal(a[:, :4], prompt)
        assert torch.equal(a, b)
    assert not torch.equal(model.generate(prompt, 20, seed=8), a)


def test_greedy_stream_and_end_token():
    model = small("gpt2")
    prompt = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, 6, top_k=1)
    expected = prompt
    for _ in range(6):  # greedy by hand: argmax of the full recomputation
        nxt = model(expected)[0][:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, nxt], dim=1)
    assert torch.equal(out, expected)
    streamed = list(model.generate(prompt, 6, top_k=1, stream=True))
    assert torch.equal(torch.stack(streamed, dim=1), out[:, 3:])
    eos = int(out[0, 4])  # the first row emits it at its second step
    stopped = model.generate(prompt, 6, top_k=1, eos_id=eos)
    assert stopped[0, 4] == eos and torch.all(stopped[0, 4:] == eos)
    if eos not in out[1, 3:].tolist():
        assert stopped.shape[1] == 9  # the other row never ends: all steps run


def test_top_k_and_top_p_filters_equal_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from mlscratch.llm.gpt import filter_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g, dtype=torch.float64) * 3
    for k in (1, 7, 50):
        assert torch.equal(
            filter_logits(logits, top_k=k).isinf(), TopKLogitsWarper(k)(None, logits).isinf()
        )
    for p in (0.05, 0.5, 0.9, 1.0):
        ours = filter_logits(logits, top_p=p).isinf()
        ref = TopPLogitsWarper(p)(None, logits).isinf()
        assert torch.equal(ours, ref), p


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=0), "top_k must be a positive integer"),
        (dict(eos_id=37), "eos_id"),
    ],
)
def test_bad_sampling_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small("gpt2").generate(torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


def test_bad_prompts():
    model = small("gpt2")
    with pytest.raises(ValueError, match="longer than the context"):
        model.generate(torch.zeros(1, 25, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="B, T >= 1"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)


def test_the_class_shows_its_api():
    """forward, new_cache, generate and from_hf are defined in the class body, not attached."""
    import ast
    import inspect

    import mlscratch.llm.gpt as gpt

    tree = ast.parse(inspect.getsource(gpt))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GPT").body
    methods = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    assert {"forward", "new_cache", "generate", "from_hf"} <= methods
    assigned = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) for t in n.targets)
    ]
    assert not assigned, "a function is attached to a class after its body"
