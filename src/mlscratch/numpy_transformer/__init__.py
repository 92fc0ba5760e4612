"""Part I: the Transformer in NumPy, every backward pass written by hand.

>>> from mlscratch.numpy_transformer import Transformer, TransformerConfig
>>> model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16,
...                                      n_heads=2, d_ff=32, n_layers=1), seed=0)
"""

from mlscratch.numpy_transformer.config import TransformerConfig
from mlscratch.numpy_transformer.decoding import beam_search, greedy_decode
from mlscratch.numpy_transformer.gradcheck import check_module, compare_gradients
from mlscratch.numpy_transformer.model import Transformer, load, save
from mlscratch.numpy_transformer.training import Adam, LabelSmoothingLoss, fit, noam_lr

__all__ = [
    "TransformerConfig",
    "Transformer",
    "save",
    "load",
    "LabelSmoothingLoss",
    "Adam",
    "noam_lr",
    "fit",
    "greedy_decode",
    "beam_search",
    "check_module",
    "compare_gradients",
]
