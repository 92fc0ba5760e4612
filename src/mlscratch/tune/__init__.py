"""Part V: from a pretrained model to a useful one (fine-tuning, instruction tuning, LoRA).

The names below load on first use, like `mlscratch.llm`'s, so importing one module of this
package does not import the chapters after it.
"""

import importlib

# public name -> the module (in this package) that defines it
_FACE = {
    name: "pretrained"
    for name in (
        "load_pretrained",
        "load_safetensors",
        "load_state_dir",
        "load_hf_model",
        "load_hf_tokenizer",
        "read_gpt2_tokenizer",
        "save_gpt2_tokenizer",
    )
}
_FACE.update(
    dict.fromkeys(
        (
            "evaluate_text",
            "TextEvaluation",
            "token_log_probs",
            "score_choices",
            "multiple_choice_accuracy",
            "MultipleChoice",
            "first_line_task",
        ),
        "evaluate",
    )
)
_FACE.update(
    dict.fromkeys(
        (
            "GPTClassifier",
            "hidden_states",
            "set_trainable",
            "fine_tune",
            "predict",
            "confusion_matrix",
            "docstring_task",
            "DocstringTask",
            "NgramVectorizer",
            "SoftmaxRegression",
        ),
        "classify",
    )
)
_FACE.update(
    dict.fromkeys(
        (
            "format_example",
            "parse_example",
            "encode_example",
            "pad_batch",
            "pack_examples",
            "packed_batches",
            "translate",
        ),
        "instruct",
    )
)
_FACE.update(
    dict.fromkeys(
        (
            "add_lora",
            "merge_lora",
            "unmerge_lora",
            "LoRALinear",
            "count_parameters",
            "lora_state_dict",
        ),
        "lora",
    )
)
__all__ = list(_FACE)


def __getattr__(name):
    if name not in _FACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_FACE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
