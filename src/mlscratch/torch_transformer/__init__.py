"""Part II: the Transformer in PyTorch, from basic tensor operations and autograd."""

from mlscratch.torch_transformer.model import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig"]
