"""The book's default corpus: standard-library source read deterministically."""

import sysconfig

from mlscratch.text.corpus import DEFAULT_CORPUS_FILES, default_corpus, default_corpus_paths


def test_default_corpus_is_deterministic_text_of_a_few_megabytes():
    text = default_corpus()
    assert text == default_corpus()
    assert 500_000 < len(text.encode("utf-8")) < 4_000_000
    assert "def " in text and "class " in text


def test_default_corpus_reads_the_listed_modules_in_order():
    paths = default_corpus_paths()
    assert len(paths) >= len(DEFAULT_CORPUS_FILES) - 2  # all of them on Python 3.10 to 3.13
    stdlib = sysconfig.get_paths()["stdlib"]
    names = [p.relative_to(stdlib).as_posix() for p in paths]
    assert names == [n for n in DEFAULT_CORPUS_FILES if n in names]
    text = default_corpus()
    assert text.startswith(paths[0].read_text(encoding="utf-8"))
    assert text.endswith(paths[-1].read_text(encoding="utf-8"))
