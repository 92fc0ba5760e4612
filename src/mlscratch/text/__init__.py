"""Text utilities shared by the parts: corpora, vocabularies, synthetic tasks, BLEU."""
