"""Machine Learning from Scratch: the package tangled from the book's chapters.

Subpackages: `numpy_transformer` (Part I), `llm` (Part II's tokenizers, Part IV's language
model and Part III's optimizer), `torch_transformer` (Part III) and `text` (corpora,
synthetic tasks, BLEU); `checkpoint` and `cli` are shared by the parts.
"""

__version__ = "0.1.0"  # the one place of the version: pyproject.toml reads it
