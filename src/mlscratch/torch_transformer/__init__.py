"""Part III: the Transformer in PyTorch, from basic tensor operations and autograd.

>>> from mlscratch.torch_transformer import Transformer, TransformerConfig
"""

from mlscratch.numpy_transformer.config import TransformerConfig
from mlscratch.torch_transformer.model import Transformer

__all__ = ["Transformer", "TransformerConfig"]
