"""The package faces: each subpackage exports its public names, and deep imports still work."""

import importlib
import subprocess
import sys

import pytest

FACES = [
    "mlscratch.numpy_transformer",
    "mlscratch.torch_transformer",
    "mlscratch.llm",
    "mlscratch.tune",
]


@pytest.mark.parametrize("name", FACES)
def test_every_exported_name_resolves_to_a_defining_module(name):
    package = importlib.import_module(name)
    assert package.__all__, f"{name} exports nothing"
    for public in package.__all__:
        value = getattr(package, public)
        defining = importlib.import_module(value.__module__)
        assert getattr(defining, public) is value  # the face re-exports, never redefines


def test_the_design_names_import_from_the_faces():
    from mlscratch.llm import (
        GPT,
        AdamW,
        BPETokenizer,
        GPTConfig,
        TrainConfig,
        add_lora,
        merge_lora,
        sample,
        train,
        unmerge_lora,
    )
    from mlscratch.numpy_transformer import Transformer, TransformerConfig
    from mlscratch.torch_transformer import Transformer as TorchTransformer
    from mlscratch.tune import load_pretrained

    assert callable(train) and callable(sample)
    assert all(map(callable, (add_lora, merge_lora, unmerge_lora, load_pretrained)))
    assert TorchTransformer is not Transformer
    assert {GPT, GPTConfig, AdamW, BPETokenizer, TrainConfig, TransformerConfig}


def test_a_function_named_like_its_module_stays_the_function(child_env):
    code = (
        "import mlscratch.llm.train, mlscratch.llm.sample, mlscratch.llm.train_cli\n"
        "from mlscratch.llm import train, sample\n"
        "import inspect\n"
        "print(inspect.isfunction(train), inspect.isfunction(sample))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_importing_the_tokenizer_does_not_load_the_later_chapters(child_env):
    code = (
        "import sys, mlscratch.llm.tokenizer\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlscratch.llm.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, check=True
    )
    assert "gpt" not in out.stdout and "train" not in out.stdout
    assert "mlscratch.llm.tokenizer" in out.stdout
