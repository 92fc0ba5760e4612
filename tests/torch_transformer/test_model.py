"""The PyTorch Transformer equals Part I's NumPy model (float64) and torch.nn's (float32)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlscratch.numpy_transformer.model import Transformer as NumpyTransformer
from mlscratch.torch_transformer import Transformer, TransformerConfig
from mlscratch.torch_transformer.model import (
    DecoderLayer,
    EncoderLayer,
    causal_mask,
    load_numpy_state_dict,
    numpy_state_dict,
    padding_mask,
)

TINY = dict(
    src_vocab_size=11,
    tgt_vocab_size=13,
    d_model=8,
    n_heads=2,
    d_ff=12,
    n_layers=2,
    dropout=0.0,
    max_len=12,
)


def configs(min_d_k=1):
    """Small random configurations; float32 comparisons use d_k >= 4, because LayerNorm
    of one or two features makes the output (and so its gradient) pure rounding noise."""
    return st.builds(
        lambda h, d_k, d_ff, n, norm_first, sv, tv: TransformerConfig(
            src_vocab_size=sv,
            tgt_vocab_size=tv,
            d_model=h * d_k,
            n_heads=h,
            d_ff=d_ff,
            n_layers=n,
            dropout=0.0,
            max_len=10,
            norm_first=norm_first,
        ),
        st.sampled_from([1, 2, 4]),
        st.integers(min_d_k, min_d_k + 3),
        st.integers(1, 16),
        st.integers(1, 3),
        st.booleans(),
        st.integers(3, 20),
        st.integers(3, 20),
    )


def padded_batch(g, B, S, T, config):
    """Random ids with padding at the end of some sentences; position 0 is never padding."""
    src = torch.randint(1, config.src_vocab_size, (B, S), generator=g)
    tgt = torch.randint(1, config.tgt_vocab_size, (B, T), generator=g)
    for ids in (src, tgt):
        lengths = torch.randint(1, ids.shape[1] + 1, (B,), generator=g)
        ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = config.pad_id
    return src, tgt


def rel_err(a, b):
    """max |a - b| / max |b| for arrays (b the reference)."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def compare_with_numpy(model, reference, src, tgt, g):
    """Logits and every parameter gradient of the two models, float64; returns worst error."""
    model.zero_grad()
    logits = model(src, tgt)
    dlogits = torch.randn(logits.shape, generator=g, dtype=torch.float64)
    logits.backward(dlogits)
    np_logits = reference.forward(src.numpy(), tgt.numpy())
    reference.zero_grad()
    reference.backward(dlogits.numpy())
    errors = {"logits": rel_err(logits.detach().numpy(), np_logits)}
    grads = reference.grads()
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        # Gradients that vanish in exact arithmetic (the key bias: softmax ignores a shift)
        # are compared with the scale of all gradients instead of their own.
        scale = max(np.abs(grads[name]).max(), 1e-6 * max(np.abs(v).max() for v in grads.values()))
        errors[name] = float(np.abs(p.grad.numpy() - grads[name]).max() / scale)
    return errors


@settings(max_examples=12, deadline=None)
@given(configs(), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10**6))
def test_numpy_weights_in_torch_model_give_equal_logits_and_gradients(config, B, S, T, seed):
    g = torch.Generator().manual_seed(seed)
    reference = NumpyTransformer(config, seed=seed % 1000)
    reference.load_state_dict({k: v.astype(np.float64) for k, v in reference.state_dict().items()})
    model = load_numpy_state_dict(Transformer(config), reference.state_dict())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    src, tgt = padded_batch(g, B, S, T, config)
    errors = compare_with_numpy(model, reference, src, tgt, g)
    assert max(errors.values()) <= 1e-9, max(errors.items(), key=lambda kv: kv[1])


@settings(max_examples=8, deadline=None)
@given(configs(), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10**6))
def test_torch_weights_in_numpy_model_give_equal_logits_and_gradients(config, B, S, T, seed):
    g = torch.Generator().manual_seed(seed)
    model = Transformer(config, seed=seed, dtype=torch.float64)
    reference = NumpyTransformer(config)
    reference.load_state_dict(numpy_state_dict(model))
    src, tgt = padded_batch(g, B, S, T, config)
    errors = compare_with_numpy(model, reference, src, tgt, g)
    assert max(errors.values()) <= 1e-9, max(errors.items(), key=lambda kv: kv[1])


@pytest.mark.parametrize("norm_first", [False, True])
def test_state_dict_keys_and_shapes_equal_the_numpy_model(norm_first):
    config = TransformerConfig(**TINY, norm_first=norm_first)
    ours = Transformer(config).state_dict()
    theirs = NumpyTransformer(config).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert ("encoder.norm.weight" in ours) == norm_first
    assert "decoder.layers.1.cross_attn.w_v.bias" in ours
    # same seed, same weights; another seed, other weights
    same = Transformer(config).state_dict()
    assert all(torch.equal(ours[k], same[k]) for k in ours)
    assert not torch.equal(ours["src_embed.weight"], Transformer(config, 1).src_embed.weight)


# ---- torch.nn references, float32 --------------------------------------------------


def rel32(a, b):
    """max |a - b| / max(max |b|, 1) for float32 tensors."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def copy_attention(ours, ref):
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)


def copy_layer(ours, ref):
    """Our encoder or decoder layer's weights into nn.TransformerEncoder/DecoderLayer."""
    copy_attention(ours.self_attn, ref.self_attn)
    if hasattr(ours, "cross_attn"):
        copy_attention(ours.cross_attn, ref.multihead_attn)
        ref.norm3.load_state_dict(ours.norm3.state_dict())
    ref.linear1.load_state_dict(ours.ff.w_1.state_dict())
    ref.linear2.load_state_dict(ours.ff.w_2.state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())


def randomize_norms(module, g):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def nn_kwargs(config):
    return dict(
        d_model=config.d_model,
        nhead=config.n_heads,
        dim_feedforward=config.d_ff,
        dropout=0.0,
        activation="relu",
        batch_first=True,
        norm_first=config.norm_first,
    )


@settings(max_examples=10, deadline=None)
@given(configs(4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10**6))
def test_layers_equal_nn_transformer_encoder_and_decoder_layers(config, B, S, T, seed):
    g = torch.Generator().manual_seed(seed)
    src, tgt = padded_batch(g, B, S, T, config)
    d = config.d_model
    x = torch.randn(B, S, d, generator=g)
    y = torch.randn(B, T, d, generator=g)
    src_pad, tgt_pad = src == config.pad_id, tgt == config.pad_id  # torch: True = ignore
    blocked = ~causal_mask(T)[0, 0]

    enc = EncoderLayer(config, g)
    randomize_norms(enc, g)
    ref_enc = nn.TransformerEncoderLayer(**nn_kwargs(config))
    copy_layer(enc, ref_enc)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1 = enc(x1, padding_mask(src, config.pad_id))
    out2 = ref_enc(x2, src_key_padding_mask=src_pad)
    dy = torch.randn(out1.shape, generator=g)
    out1.backward(dy)
    out2.backward(dy)
    assert rel32(out1, out2) <= 1e-5
    assert rel32(x1.grad, x2.grad) <= 1e-5
    assert rel32(enc.ff.w_1.weight.grad, ref_enc.linear1.weight.grad) <= 1e-5

    dec = DecoderLayer(config, g)
    randomize_norms(dec, g)
    ref_dec = nn.TransformerDecoderLayer(**nn_kwargs(config))
    copy_layer(dec, ref_dec)
    y1, y2 = y.clone().requires_grad_(), y.clone().requires_grad_()
    m1, m2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    tgt_mask = padding_mask(tgt, config.pad_id) & causal_mask(T)
    out1 = dec(y1, m1, tgt_mask, padding_mask(src, config.pad_id))
    out2 = ref_dec(
        y2, m2, tgt_mask=blocked, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad
    )
    dy = torch.randn(out1.shape, generator=g)
    out1.backward(dy)
    out2.backward(dy)
    assert rel32(out1, out2) <= 1e-5
    assert rel32(y1.grad, y2.grad) <= 1e-5
    assert rel32(m1.grad, m2.grad) <= 1e-5
    assert (
        rel32(dec.cross_attn.w_o.weight.grad, ref_dec.multihead_attn.out_proj.weight.grad) <= 1e-5
    )


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@settings(max_examples=8, deadline=None)
@given(configs(4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10**6))
def test_whole_model_equals_nn_transformer_with_the_same_weights(config, B, S, T, seed):
    g = torch.Generator().manual_seed(seed)
    model = Transformer(config, seed=seed)
    randomize_norms(model, g)
    ref = nn.Transformer(
        num_encoder_layers=config.n_layers, num_decoder_layers=config.n_layers, **nn_kwargs(config)
    )
    for ours, theirs in zip(model.encoder.layers, ref.encoder.layers, strict=True):
        copy_layer(ours, theirs)
    for ours, theirs in zip(model.decoder.layers, ref.decoder.layers, strict=True):
        copy_layer(ours, theirs)
    if config.norm_first:
        ref.encoder.norm.load_state_dict(model.encoder.norm.state_dict())
        ref.decoder.norm.load_state_dict(model.decoder.norm.state_dict())
    else:  # nn.Transformer always ends with a LayerNorm; the post-norm layout has none
        ref.encoder.norm = ref.decoder.norm = None
    src, tgt = padded_batch(g, B, S, T, config)
    logits = model(src, tgt)

    def embed(ids, embedding, pos):
        return embedding.weight[ids] * config.d_model**0.5 + pos.pe[: ids.shape[1]].float()

    h = ref(
        embed(src, model.src_embed, model.src_pos),
        embed(tgt, model.tgt_embed, model.tgt_pos),
        tgt_mask=~causal_mask(T)[0, 0],
        src_key_padding_mask=src == config.pad_id,
        tgt_key_padding_mask=tgt == config.pad_id,
        memory_key_padding_mask=src == config.pad_id,
    )
    expected = h @ model.tgt_embed.weight.T
    assert rel32(logits, expected) <= 1e-5


def test_dropout_is_seeded_and_off_in_eval():
    config = TransformerConfig(**{**TINY, "dropout": 0.3})
    model = Transformer(config)
    src, tgt = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])
    torch.manual_seed(0)
    a = model(src, tgt)
    torch.manual_seed(0)
    assert torch.equal(a, model(src, tgt))
    assert not torch.equal(a, model(src, tgt))
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))


# ---- bad input -----------------------------------------------------------------------


@pytest.fixture
def model():
    return Transformer(TransformerConfig(**TINY))


def test_bad_ids_raise_clear_errors(model):
    good = torch.tensor([[1, 2, 3]])
    cases = [
        (np.array([[1, 2]]), good, TypeError, "src must be a torch.Tensor"),
        (good.float(), good, TypeError, "src must have an integer dtype"),
        (good, good.bool(), TypeError, "tgt must have an integer dtype"),
        (good[0], good, ValueError, r"src must have shape \(B, L\)"),
        (good[:, :0], good, ValueError, "src is empty"),
        (torch.ones(1, 13, dtype=torch.long), good, ValueError, "more than max_len 12"),
        (torch.tensor([[1, 11]]), good, ValueError, r"src ids must lie in \[0, 11\), got 1..11"),
        (good, torch.tensor([[-1, 2]]), ValueError, r"tgt ids must lie in \[0, 13\)"),
        (good, torch.ones(2, 3, dtype=torch.long), ValueError, "tgt batch 2 != src batch 1"),
    ]
    for src, tgt, error, message in cases:
        with pytest.raises(error, match=message):
            model(src, tgt)


def test_bad_config_is_rejected():
    with pytest.raises(TypeError, match="TransformerConfig"):
        Transformer(dict(TINY))
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerConfig(**{**TINY, "n_heads": 3})


def test_mismatched_weights_name_the_keys(model):
    state = numpy_state_dict(model)
    missing = {k: v for k, v in state.items() if k != "src_embed.weight"}
    with pytest.raises(ValueError, match=r"missing \['src_embed.weight'\]"):
        load_numpy_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        load_numpy_state_dict(model, {**state, "extra": np.zeros(1)})
    wrong = {**state, "decoder.layers.0.ff.w_1.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"decoder.layers.0.ff.w_1.weight: expected shape"):
        load_numpy_state_dict(model, wrong)
    mixed = {**state, "tgt_embed.weight": state["tgt_embed.weight"].astype(np.float64)}
    with pytest.raises(TypeError, match="all float32 or all float64"):
        load_numpy_state_dict(model, mixed)
    with pytest.raises(RuntimeError, match="decoder.layers.0.ff.w_1.weight"):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in wrong.items()})


def test_weights_round_trip_both_ways(model):
    config = model.config
    reference = NumpyTransformer(config, seed=5)
    load_numpy_state_dict(model, reference.state_dict())
    back = numpy_state_dict(model)
    assert all(np.array_equal(back[k], v) for k, v in reference.state_dict().items())
    assert model.src_embed.weight.dtype == torch.float32
