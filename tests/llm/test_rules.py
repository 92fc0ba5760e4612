"""The language model's package code (mlscratch/llm) builds its layers and optimizer itself
(CONTRIBUTING.md, "Conventions of the parts"): no torch.nn layer classes, no torch.optim
optimizers, and torch.nn.functional only on the GPT's optional fused path."""

import ast
from pathlib import Path

import pytest

import mlscratch.llm

PACKAGE = Path(mlscratch.llm.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
CONTAINERS = {"Module", "Parameter", "ModuleList", "ModuleDict", "ParameterList"}


def parents(tree):
    links = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            links[child] = node
    return links


def on_fused_path(node, links, source):
    """Inside a fused_* definition, or in the body of a test that reads `fused`."""
    child, node = node, links.get(node)
    while node is not None:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("fused_"):
            return True
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id.startswith("fused_") for t in node.targets
        ):
            return True
        if isinstance(node, (ast.If, ast.IfExp)) and child is not node.test:
            test = ast.get_source_segment(source, node.test)
            branch = node.body if isinstance(node, ast.If) else [node.body]
            if "fused" in test and (child in branch or child is node.body):
                return True
        child, node = node, links.get(node)
    return False


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_prebuilt_layers_or_optimizers(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    links = parents(tree)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name):
            continue
        owner, name = node.value.id, node.attr
        where = f"{path.name}:{node.lineno}: {owner}.{name}"
        if owner == "nn" and name[:1].isupper() and name not in CONTAINERS:
            problems.append(f"{where} (a torch.nn layer class)")
        if owner == "F" and not on_fused_path(node, links, source):
            problems.append(f"{where} (torch.nn.functional outside the fused path)")
    for node in ast.walk(tree):  # torch.optim.X: only the Optimizer base class
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "optim"
            and node.attr not in ("Optimizer",)
        ):
            problems.append(f"{path.name}:{node.lineno}: torch.optim.{node.attr}")
    assert not problems, "\n".join(problems)


def test_the_scan_sees_a_violation(tmp_path):
    """The checker itself can fail: F outside a fused branch is caught, inside it is not."""
    source = (
        "import torch.nn.functional as F\n"
        "def f(x, fused):\n    if fused:\n        return F.relu(x)\n"
        "    return F.gelu(x)\n"
    )
    tree = ast.parse(source)
    links = parents(tree)
    calls = {
        n.attr: on_fused_path(n, links, source)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "F"
    }
    assert calls == {"relu": True, "gelu": False}
