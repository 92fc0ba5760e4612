"""The assembled NumPy Transformer: whole-model gradients, state dicts, files, bad input."""

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.gradcheck import compare_gradients
from mlscratch.numpy_transformer.model import Transformer, TransformerConfig, load, save
from mlscratch.numpy_transformer.training import LabelSmoothingLoss, fit

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


def float64(model):
    model.load_state_dict({k: v.astype(np.float64) for k, v in model.state_dict().items()})
    return model


def padded_batch(rng, B, S, T, src_vocab, tgt_vocab, pad_id=0):
    src = rng.integers(1, src_vocab, (B, S))
    tgt_in = rng.integers(1, tgt_vocab, (B, T))
    tgt_out = rng.integers(1, tgt_vocab, (B, T))
    if B > 1:  # pad the end of the first sentence on both sides
        src[0, max(1, S // 2) :] = pad_id
        tgt_in[0, max(1, T // 2) :] = pad_id
        tgt_out[0, max(1, T // 2) :] = pad_id
    return src, tgt_in, tgt_out


@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.generate], derandomize=True)
@given(
    n_heads=st.sampled_from([1, 2]),
    n_layers=st.integers(1, 2),
    norm_first=st.booleans(),
    B=st.integers(1, 3),
    S=st.integers(1, 5),
    T=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_whole_model_with_label_smoothing_passes_finite_differences(
    n_heads, n_layers, norm_first, B, S, T, seed
):
    config = TransformerConfig(
        **{**TINY, "n_heads": n_heads, "n_layers": n_layers}, norm_first=norm_first
    )
    model = float64(Transformer(config, seed=seed))
    src, tgt_in, tgt_out = padded_batch(np.random.default_rng(seed), B, S, T, 11, 13)
    loss_fn = LabelSmoothingLoss(0.1, ignore_index=config.pad_id)

    def loss():
        return float(loss_fn.forward(model.forward(src, tgt_in), tgt_out))

    loss()
    model.zero_grad()
    model.backward(loss_fn.backward())
    analytic = {name: grad.copy() for name, grad in model.grads().items()}
    # h = 1e-5: the best step for central differences in float64 (chapter 1's figure); it
    # keeps round-off in the exactly-zero key-bias gradients well below the threshold.
    errors = compare_gradients(loss, model.state_dict(), analytic, h=1e-5)
    assert max(errors.values()) <= 1e-6, {k: v for k, v in errors.items() if v > 1e-6}


def test_state_dict_names_and_the_tied_output_projection():
    model = Transformer(TransformerConfig(**TINY, norm_first=True))
    state = model.state_dict()
    assert list(state) == list(model.grads())
    assert "tgt_embed.weight" in state and "src_embed.weight" in state
    assert not any("proj" in name for name in state)  # the output projection is tgt_embed
    assert "encoder.layers.1.self_attn.w_q.weight" in state
    assert "decoder.layers.0.cross_attn.w_o.bias" in state
    assert "decoder.layers.1.ff.w_2.weight" in state and "decoder.norm.weight" in state
    post = Transformer(TransformerConfig(**TINY)).state_dict()
    assert "decoder.norm.weight" not in post and "encoder.norm.bias" not in post
    # logits are the decoder output times the target embedding matrix
    src, tgt = np.array([[1, 2, 3]]), np.array([[1, 4]])
    logits = model.forward(src, tgt)
    np.testing.assert_allclose(logits, model.h @ state["tgt_embed.weight"].T)


def test_dtypes_follow_the_weights():
    model = Transformer(TransformerConfig(**TINY))
    src, tgt = np.array([[1, 2, 3]]), np.array([[1, 4]])
    assert model.forward(src, tgt).dtype == np.float32
    assert float64(model).forward(src, tgt).dtype == np.float64


def test_dropout_is_random_in_training_and_off_in_eval():
    model = Transformer(TransformerConfig(**{**TINY, "dropout": 0.3}))
    src, tgt = np.array([[1, 2, 3, 4]]), np.array([[1, 4, 5]])
    model.train()
    assert not np.array_equal(model.forward(src, tgt), model.forward(src, tgt))
    model.eval()
    np.testing.assert_array_equal(model.forward(src, tgt), model.forward(src, tgt))


def test_save_and_load_round_trip(tmp_path):
    model = Transformer(TransformerConfig(**TINY, norm_first=True), seed=3)
    path = tmp_path / "model.npz"
    save(model, path)
    loaded = load(path)
    assert loaded.config == model.config
    src, tgt = np.array([[1, 2, 3], [4, 5, 0]]), np.array([[1, 4], [2, 0]])
    np.testing.assert_array_equal(loaded.forward(src, tgt), model.forward(src, tgt))


def rewrite(path, edit):
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    edit(arrays)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda a: a.pop("decoder.layers.0.ff.w_1.bias"), KeyError, "missing"),
        (lambda a: a.update(stray=np.zeros(2, np.float32)), KeyError, "unexpected"),
        (
            lambda a: a.update({"src_embed.weight": np.zeros((3, 8), np.float32)}),
            ValueError,
            r"src_embed.weight: expected \(11, 8\), got \(3, 8\)",
        ),
        (lambda a: a.update(__format__=np.array("something else")), ValueError, "format"),
        (lambda a: a.pop("__format__"), ValueError, "format"),
        (lambda a: a.update(__config__=np.array('{"d_model": 8}')), ValueError, "config"),
        (lambda a: a.update(__config__=np.array("not json")), ValueError, "config"),
    ],
)
def test_load_rejects_damaged_files(tmp_path, edit, error, message):
    path = tmp_path / "model.npz"
    save(Transformer(TransformerConfig(**TINY)), path)
    rewrite(path, edit)
    with pytest.raises(error, match=message):
        load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(d_model=10, n_heads=4), r"d_model \(10\) must be divisible by n_heads \(4\)"),
        (dict(pad_id=11), "pad_id 11 is outside the vocabularies"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
        (dict(d_ff=2.5), "d_ff must be a positive integer"),
    ],
)
def test_config_rejects_impossible_models(change, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**TINY, **change})


@pytest.mark.parametrize(
    ("src", "tgt", "error", "message"),
    [
        (np.array([[1.0, 2.0]]), np.array([[1]]), TypeError, "src"),
        (np.array([1, 2]), np.array([[1]]), ValueError, "src must have 2 dimensions"),
        (np.array([[1, 11]]), np.array([[1]]), ValueError, r"src ids must lie in \[0, 11\)"),
        (np.array([[1, 2]]), np.array([[13]]), ValueError, r"tgt ids must lie in \[0, 13\)"),
        (np.zeros((0, 3), int), np.zeros((0, 2), int), ValueError, "src is empty"),
        (np.array([[1, 2]]), np.array([[1], [2]]), ValueError, "batch"),
        (np.ones((1, 13), int), np.array([[1]]), ValueError, "more than max_len 12"),
    ],
)
def test_forward_rejects_bad_batches(src, tgt, error, message):
    with pytest.raises(error, match=message):
        Transformer(TransformerConfig(**TINY)).forward(src, tgt)


def reversal(n, rng):
    pairs = []
    for length in rng.integers(2, 5, n):
        seq = rng.integers(3, 9, length).tolist()
        pairs.append((seq, seq[::-1]))
    return pairs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_is_reproducible_and_learns_in_both_dtypes(dtype):
    config = TransformerConfig(
        9, 9, d_model=16, n_heads=2, d_ff=32, n_layers=1, dropout=0.1, max_len=8
    )
    pairs = reversal(256, np.random.default_rng(0))
    runs = []
    for _ in range(2):
        model = Transformer(config, seed=0, dtype=dtype)
        history = fit(
            model,
            pairs,
            steps=150,
            batch_size=32,
            bos_id=1,
            eos_id=2,
            warmup=30,
            seed=5,
            progress=False,
        )
        runs.append(([h["loss"] for h in history], model.state_dict()))
        assert all(p.dtype == dtype for p in model.state_dict().values())
    (losses, state), (losses2, state2) = runs
    assert losses == losses2
    assert all(np.array_equal(state[k], state2[k]) for k in state)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
