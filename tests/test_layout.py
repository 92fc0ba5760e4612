"""Layout of src/: every module is tangled from a chapter, except the package faces."""

from mlscratch import tangle as t

HAND_WRITTEN = {"__init__.py", "__main__.py"}


def stray_files(root):
    """Python files under src/ that are neither generated nor an `__init__`/`__main__`."""
    generated = t.generated_files(root)
    stray = []
    for path in sorted((root / "src").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel not in generated and path.name not in HAND_WRITTEN:
            stray.append(rel)
    return stray


def test_a_hand_written_module_is_caught(tmp_path):
    package = tmp_path / "src/mlscratch/part"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A face."""\n')
    (package.parent / "__main__.py").write_text("print('hi')\n")
    (package / "made.py").write_text(t.GENERATED.format(chapter="book/x.md") + "X = 1\n")
    assert stray_files(tmp_path) == []
    (package / "hand.py").write_text("# Written by hand\nX = 1\n")
    (package / "late.py").write_text("X = 1\n" + t.GENERATED.format(chapter="book/x.md"))
    assert stray_files(tmp_path) == ["src/mlscratch/part/hand.py", "src/mlscratch/part/late.py"]


def test_every_module_in_src_is_generated_or_a_package_face(repo_root):
    """Write code in a chapter (and tangle it), never straight into src/."""
    assert stray_files(repo_root) == []
