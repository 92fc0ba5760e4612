"""The Multi30k loader reads parallel files strictly; the joint BPE round-trips the text."""

import gzip

import pytest

from mlscratch.text.multi30k import (
    SPECIAL_TOKENS,
    SPLITS,
    decode_ids,
    encode_pairs,
    load_multi30k,
    multi30k_dir,
    read_lines,
    special_ids,
    train_joint_bpe,
)

PAIRS = {
    "train": [
        ("A dog runs.", "Ein Hund rennt."),
        ("Two men  talk\u2028here.", "Zwei Männer reden."),
        ("", "Leer"),
        ("A girl in a café.", "Ein Mädchen in einem Café."),
    ],
    "val": [("A cat.", "Eine Katze.")],
    "test_2016_flickr": [("A red ball.", "Ein roter Ball."), ("Hi", "Hallo")],
}


def write_corpus(directory, pairs=PAIRS, compress=False, trailing_newline=True):
    for split, rows in pairs.items():
        for side, lang in enumerate(("en", "de")):
            text = "\n".join(row[side] for row in rows) + ("\n" if trailing_newline else "")
            data = text.encode("utf-8")
            if compress:
                (directory / f"{split}.{lang}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / f"{split}.{lang}").write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("trailing_newline", [False, True])
def test_loads_plain_and_gzip_files_exactly(tmp_path, compress, trailing_newline):
    write_corpus(tmp_path, compress=compress, trailing_newline=trailing_newline)
    assert load_multi30k(tmp_path) == PAIRS  # U+2028 and double spaces kept, "" kept


def test_plain_file_is_preferred_and_mixed_compression_works(tmp_path):
    write_corpus(tmp_path, compress=True)
    (tmp_path / "val.en").write_text("Plain cat.\n", encoding="utf-8")
    assert load_multi30k(tmp_path)["val"] == [("Plain cat.", "Eine Katze.")]


def test_every_missing_file_is_named(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "val.de").unlink()
    (tmp_path / "test_2016_flickr.en").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_multi30k(tmp_path)
    assert "val.de" in str(err.value) and "test_2016_flickr.en" in str(err.value)
    assert "train" not in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_multi30k(tmp_path / "nowhere")


def test_sides_of_different_length_are_refused(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "train.de").write_text("Ein Hund.\nZwei.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.en has 4 lines but .*train\.de has 2"):
        load_multi30k(tmp_path)


def test_non_utf8_file_is_named(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "val.en").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"val\.en is not UTF-8"):
        load_multi30k(tmp_path)


def test_empty_file_has_no_lines(tmp_path):
    (tmp_path / "a.en").write_bytes(b"")
    (tmp_path / "b.en").write_bytes(b"\n")
    assert read_lines(tmp_path / "a.en") == []
    assert read_lines(tmp_path / "b.en") == [""]


def test_multi30k_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSCRATCH_MULTI30K", str(tmp_path))
    assert multi30k_dir() == tmp_path
    monkeypatch.delenv("MLSCRATCH_MULTI30K")
    (tmp_path / "multi30k").mkdir()
    monkeypatch.setenv("MLSCRATCH_SHARED_DATA", str(tmp_path))
    assert multi30k_dir() == tmp_path / "multi30k"


def test_joint_bpe_has_specials_and_round_trips():
    pairs = PAIRS["train"] * 3
    tokenizer = train_joint_bpe(pairs, vocab_size=300)
    pad_id, bos_id, eos_id = special_ids(tokenizer)
    assert [pad_id, bos_id, eos_id] == [tokenizer.special_tokens[t] for t in SPECIAL_TOKENS]
    assert len({pad_id, bos_id, eos_id}) == 3 and max(pad_id, bos_id, eos_id) < 300
    for (src, tgt), (src_ids, tgt_ids) in zip(pairs, encode_pairs(tokenizer, pairs), strict=True):
        assert decode_ids(tokenizer, src_ids) == src
        assert decode_ids(tokenizer, [*tgt_ids, eos_id, 5, 6], eos_id) == tgt
        assert decode_ids(tokenizer, [bos_id, *tgt_ids, pad_id]) == tgt
    # special-token text inside a sentence is ordinary text, not the special id
    ids = encode_pairs(tokenizer, [("x <pad> y", "</s>")])[0]
    assert pad_id not in ids[0] and eos_id not in ids[1]


def test_bpe_refuses_bad_input():
    with pytest.raises(ValueError, match="no sentence pairs"):
        train_joint_bpe([], vocab_size=300)
    tokenizer = train_joint_bpe(
        PAIRS["train"], vocab_size=260, special_tokens=("<p>", "<b>", "<e>")
    )
    with pytest.raises(ValueError, match="lacks the special tokens"):
        special_ids(tokenizer)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode_ids(tokenizer, [tokenizer.vocab_size])


def test_real_multi30k():
    directory = multi30k_dir()
    if directory is None:
        pytest.skip(
            "Multi30k not found: set MLSCRATCH_SHARED_DATA (or MLSCRATCH_MULTI30K) "
            "to the folder holding the shared data"
        )
    data = load_multi30k(directory)
    assert {s: len(data[s]) for s in SPLITS} == {
        "train": 29000,
        "val": 1014,
        "test_2016_flickr": 1000,
    }
    en, de = data["train"][0]
    assert en.startswith("Two young, White males") and de.startswith("Zwei junge")
    assert all(en and de and "\n" not in en + de for en, de in data["test_2016_flickr"])
