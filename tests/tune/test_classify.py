"""Fine-tuning for classification: the task, the baseline against scikit-learn, the GPT
classifier's features, gradients and freezing, and bad input."""

import numpy as np
import pytest
import torch

from mlscratch.llm.gpt import GPT, GPTConfig
from mlscratch.tune.classify import (
    CLASSIFY_MODULES,
    GPTClassifier,
    NgramVectorizer,
    SoftmaxRegression,
    confusion_matrix,
    docstring_task,
    encode_texts,
    fine_tune,
    hidden_states,
    last_token,
    make_batches,
    module_files,
    pad_right,
    set_trainable,
)

TEXTS = [
    "Return the event loop.", "Parse an e-mail message header", "Set the  loop policy",
    "Return the message body", "XML element tree parser", "Create a new   element",
    "event loop closed", "header and body", "Element children, in order", "the loop runs",
]  # fmt: skip
LABELS = [0, 1, 0, 1, 2, 2, 0, 1, 2, 0]


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def task():
    return docstring_task()


def test_task_is_deterministic_and_splits_do_not_overlap(task):
    again = docstring_task()
    for split in ("train", "val", "test"):
        assert getattr(task, split) == getattr(again, split)
    texts = [{ex.text for ex in getattr(task, s)} for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    where = [ex.where for s in ("train", "val", "test") for ex in getattr(task, s)]
    assert len(where) == len(set(where))  # each function in one split only
    assert task.classes == CLASSIFY_MODULES
    for label in range(len(task.classes)):  # every class in every split
        assert all(any(ex.label == label for ex in getattr(task, s)) for s in ("val", "test"))
    other = docstring_task(seed=1)
    assert [ex.where for ex in other.test] != [ex.where for ex in task.test]


def test_task_leaves_out_the_pretraining_corpus():
    names = {p.as_posix() for name in CLASSIFY_MODULES for p in module_files(name)}
    assert not any(n.endswith(("http/client.py", "unittest/case.py")) for n in names)
    assert not any("/test/" in n or "/tests/" in n for n in names)


def test_task_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_module"):
        module_files("no_such_module")
    with pytest.raises(ValueError, match="min_per_class"):
        docstring_task(modules=("asyncio", "email"), min_per_class=100_000)
    with pytest.raises(ValueError, match="two distinct modules"):
        docstring_task(modules=("email", "email"))


def test_vectorizer_equals_sklearn():
    sk = pytest.importorskip("sklearn.feature_extraction.text")
    for ours, theirs in [
        (NgramVectorizer(word=(1, 2)), sk.CountVectorizer(ngram_range=(1, 2))),
        (NgramVectorizer(word=(1, 1), min_df=2), sk.CountVectorizer(min_df=2)),
        (
            NgramVectorizer(word=(0, 0), char=(2, 4)),
            sk.CountVectorizer(analyzer="char", ngram_range=(2, 4)),
        ),
    ]:
        ours.fit(TEXTS)
        theirs.fit(TEXTS)
        assert ours.vocabulary == theirs.vocabulary_
        new = ["an unseen text about the loop and the header", *TEXTS[:3]]
        assert np.array_equal(
            ours.transform(new).to_dense().numpy(), theirs.transform(new).toarray()
        )


@pytest.mark.parametrize("C", [0.3, 3.0])
def test_softmax_regression_equals_sklearn(C):
    lm = pytest.importorskip("sklearn.linear_model")
    X = NgramVectorizer(word=(1, 2)).fit(TEXTS).transform(TEXTS)
    y = torch.tensor(LABELS)
    ours = SoftmaxRegression(C=C, max_iter=2000, lr=0.05).fit(X, y, dtype=torch.float64)
    Xd = X.to_dense().double().numpy()
    theirs = lm.LogisticRegression(C=C, max_iter=10_000, tol=1e-12).fit(Xd, LABELS)
    np.testing.assert_allclose(ours.predict_proba(X).numpy(), theirs.predict_proba(Xd), atol=1e-4)
    np.testing.assert_allclose(ours.W.numpy(), theirs.coef_, atol=1e-3)
    assert np.array_equal(ours.predict(X).numpy(), theirs.predict(Xd))


def test_softmax_regression_gradient_is_autograd():
    torch.manual_seed(0)
    X, y = torch.randn(7, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    m = SoftmaxRegression(C=0.7)
    m.W, m.b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    W, b = m.W.clone().requires_grad_(), m.b.clone().requires_grad_()
    logp = torch.log_softmax(X @ W.T + b, -1)
    J = 0.7 * -logp[torch.arange(7), y].sum() + 0.5 * (W**2).sum()
    J.backward()
    gW, gb = m.gradients(X, torch.nn.functional.one_hot(y, 3).double())
    torch.testing.assert_close(gW * 0.7 * 7, W.grad)
    torch.testing.assert_close(gb * 0.7 * 7, b.grad)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_hidden_states_give_the_logits(pos):
    model = tiny_gpt(pos=pos).eval()
    idx = torch.randint(0, 50, (3, 11))
    logits, _ = model(idx)
    torch.testing.assert_close(hidden_states(model, idx) @ model.wte.T, logits)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_right_padding_does_not_change_the_features(pos):
    model = tiny_gpt(pos=pos).eval()
    seqs = [[3, 4, 5], [7, 1, 2, 9, 9, 8, 4], [11]]
    clf = GPTClassifier(model, 4, dropout=0.0)
    torch.nn.init.normal_(clf.weight)
    for pad_id in (0, 42):
        idx, lengths = pad_right(seqs, pad_id)
        padded = last_token(hidden_states(model, idx), lengths)
        alone = torch.stack([hidden_states(model, torch.tensor([s]))[0, -1] for s in seqs])
        torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
        logits = clf(idx, lengths)
        torch.testing.assert_close(logits, alone @ clf.weight.T + clf.bias)


def test_head_gradients_equal_torch_nn():
    model = tiny_gpt().double().eval()
    clf = GPTClassifier(model, 3, dropout=0.0).double()
    torch.nn.init.normal_(clf.weight)
    torch.nn.init.normal_(clf.bias)
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    idx, lengths = pad_right(seqs)
    y = torch.tensor([2, 0, 1])
    from mlscratch.llm.gpt import cross_entropy

    cross_entropy(clf(idx, lengths), y).backward()
    head = torch.nn.Linear(16, 3).double()
    with torch.no_grad():
        head.weight.copy_(clf.weight)
        head.bias.copy_(clf.bias)
        h = torch.stack([hidden_states(model, torch.tensor([s]))[0, -1] for s in seqs])
    torch.nn.functional.cross_entropy(head(h), y).backward()
    torch.testing.assert_close(clf.weight.grad, head.weight.grad)
    torch.testing.assert_close(clf.bias.grad, head.bias.grad)


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_only_the_chosen_parameters_change(blocks):
    clf = GPTClassifier(tiny_gpt(), 3, dropout=0.1)
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3, 3], [5, 1, 2], [9]]
    batches = make_batches(seqs, [0, 1, 2, 0, 1, 2], batch_size=3)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    info = fine_tune(clf, batches, blocks, epochs=2, lr=1e-2)
    trained = set(set_trainable(clf, blocks))
    changed = {n for n, p in clf.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trained
    top = {f"gpt.h.{i}." for i in range(3 - blocks, 3)}
    for n in trained:
        assert n in ("weight", "bias") or n.startswith((*top, "gpt.ln_f.")) or blocks == 3
    assert ("gpt.wte" in trained) == (blocks == 3)
    assert info["trained"] == sum(p.numel() for n, p in clf.named_parameters() if n in trained)
    assert len(info["loss"]) == 2


def test_fine_tune_learns_a_separable_task():
    torch.manual_seed(0)
    seqs = [[1 + int(y) * 10 + int(j) for j in torch.randint(0, 5, (6,))] for y in [0, 1] * 20]
    labels = [0, 1] * 20
    clf = GPTClassifier(tiny_gpt(), 2, dropout=0.0)
    batches = make_batches(seqs, labels, batch_size=8)
    fine_tune(clf, batches, 3, epochs=10, lr=3e-3)
    from mlscratch.tune.classify import predict

    pred, true = predict(clf, batches)
    assert (pred == true).float().mean() == 1.0
    cm = confusion_matrix(pred, true, 2)
    assert cm.tolist() == [[20, 0], [0, 20]]


def test_bad_input():
    tok = type("T", (), {"encode": staticmethod(lambda s: [ord(c) % 50 for c in s])})()
    with pytest.raises(ValueError, match="text 1 is empty"):
        encode_texts(tok, ["abc", ""], 8)
    with pytest.raises(TypeError, match="list of strings"):
        encode_texts(tok, "abc", 8)
    assert encode_texts(tok, ["a" * 40], 16) == [[ord("a") % 50] * 16]  # first max_tokens
    model = tiny_gpt()
    clf = GPTClassifier(model, 3)
    too_long, lengths = pad_right([list(range(20))])
    with pytest.raises(ValueError, match="longer than the context"):
        clf(too_long, lengths)
    with pytest.raises(ValueError, match="lengths must be in"):
        last_token(torch.zeros(2, 4, 16), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="blocks must be"):
        set_trainable(clf, 4)
    with pytest.raises(ValueError, match="n_classes"):
        GPTClassifier(model, 1)
    with pytest.raises(ValueError, match="3 sequences but 2 labels"):
        make_batches([[1], [2], [3]], [0, 1], 2)
    with pytest.raises(ValueError, match="not fitted"):
        NgramVectorizer().transform(["x"])
    with pytest.raises(ValueError, match="not fitted"):
        SoftmaxRegression().predict(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="C > 0"):
        SoftmaxRegression(C=0)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\)"):
        fine_tune(GPTClassifier(tiny_gpt(), 2), make_batches([[1, 2]], [5], 1), 0, epochs=1)
