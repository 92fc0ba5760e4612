"""Part III: the Transformer in PyTorch, from basic tensor operations and autograd.

>>> from mlscratch.torch_transformer import Transformer, TransformerConfig, Trainer, TrainConfig
"""

from mlscratch.numpy_transformer.config import TransformerConfig
from mlscratch.torch_transformer.batching import make_batch, token_batches
from mlscratch.torch_transformer.decoding import beam_search, greedy_decode, translate
from mlscratch.torch_transformer.model import Transformer
from mlscratch.torch_transformer.training import (
    TrainConfig,
    Trainer,
    label_smoothing_loss,
    model_from_checkpoint,
)

__all__ = [
    "TransformerConfig",
    "Transformer",
    "make_batch",
    "token_batches",
    "label_smoothing_loss",
    "TrainConfig",
    "Trainer",
    "model_from_checkpoint",
    "greedy_decode",
    "beam_search",
    "translate",
]
