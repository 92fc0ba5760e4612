"""Machine Learning from Scratch: the package tangled from the book's chapters.

Subpackages: `numpy_transformer` (Part I), `torch_transformer` (Part II), `llm`
(Part III) and `text` (corpora, synthetic tasks, BLEU).
"""

__version__ = "0.1.0"  # the one place of the version: pyproject.toml reads it
