"""Part IV: a language model from scratch (and Part II's tokenizers, whose modules live here).

>>> from mlscratch.llm import GPT, GPTConfig, AdamW, train, TrainConfig, add_lora

The names below load on first use, so importing one module of this package (the tokenizer,
say, which Part II builds before any model) does not also import the chapters after it.
"""

import importlib
import sys
import types

# public name -> the module (in this package) that defines it
_FACE = {
    "BPETokenizer": "tokenizer",
    "GPT": "gpt",
    "GPTConfig": "gpt",
    "AdamW": "optim",
    "clip_grad_norm": "optim",
    "lr_schedule": "optim",
    "Trainer": "trainer",
    "train_loop": "trainer",
    "TrainConfig": "train",
    "train": "train",
    "load_model": "sample",
    "sample": "sample",
    # Part V's LoRA, next to the model it adapts (a module of mlscratch.tune)
    "add_lora": "mlscratch.tune.lora",
    "merge_lora": "mlscratch.tune.lora",
    "unmerge_lora": "mlscratch.tune.lora",
}
__all__ = list(_FACE)


def __getattr__(name):
    if name not in _FACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _FACE[name] if "." in _FACE[name] else f"{__name__}.{_FACE[name]}"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Face(types.ModuleType):
    """Importing the submodule `train` (or `sample`) must not hide the function of that name."""

    def __setattr__(self, name, value):
        if not (name in _FACE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
