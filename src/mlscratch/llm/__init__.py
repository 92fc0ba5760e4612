"""Part III: a language model from scratch."""
