"""Reading order is import order: no module or cell imports code from a later chapter."""

import io
import textwrap

import pytest

from mlscratch import tangle as t

TOC = """\
format: jb-book
root: book/index
parts:
  - caption: One
    chapters:
      - file: book/one
  - caption: Two
    chapters:
      - file: book/two
        sections:
          - file: book/three.md
"""

ONE = """\
---
tangle: src/mlscratch/first.py
---
# Chapter one

```{code-cell} ipython3
:tags: [export]

def f():
    return 1
```

```{code-cell} ipython3
%matplotlib inline
from mlscratch.first import f

f()
```
"""

TWO = """\
---
tangle: src/mlscratch/part/later.py
---
# Chapter two

```{code-cell} ipython3
:tags: [export]

from mlscratch.first import f


class Later:
    value = f()
```

```{code-cell} ipython3
from mlscratch.part import Later, Alias, HERE
import mlscratch.first
```
"""

FACE = '''\
"""A package face: re-exports its modules' public names."""

from mlscratch.part.later import Later
from .later import Later as Alias

HERE = 1
'''


def demonstration(code):
    return f"\n```{{code-cell}} ipython3\n{textwrap.dedent(code)}```\n"


@pytest.fixture
def repo(tmp_path):
    """A two-chapter book whose package has a face (`mlscratch.part`), in reading order."""
    (tmp_path / "book").mkdir()
    (tmp_path / "_toc.yml").write_text(TOC)
    (tmp_path / "book/index.md").write_text("# Index\n")
    (tmp_path / "book/one.md").write_text(ONE)
    (tmp_path / "book/two.md").write_text(TWO)
    (tmp_path / "book/three.md").write_text("# Three\n")
    (tmp_path / "src/mlscratch/part").mkdir(parents=True)
    (tmp_path / "src/mlscratch/__init__.py").write_text('"""The package."""\n')
    (tmp_path / "src/mlscratch/part/__init__.py").write_text(FACE)
    assert t.tangle(tmp_path, out=io.StringIO()) == 0
    return tmp_path


def problems(repo):
    return t.check_reading_order(repo)


def test_toc_order_is_root_then_parts_chapters_and_sections_depth_first(repo):
    order = ["book/index.md", "book/one.md", "book/two.md", "book/three.md"]
    assert t.toc_order(repo) == order


def test_a_book_in_reading_order_passes(repo):
    assert problems(repo) == []
    assert t.tangle(repo, check=True, out=io.StringIO()) == 0


def test_a_module_importing_a_later_chapters_module_fails(repo):
    late = ONE.replace(
        "    return 1", "    from mlscratch.part.later import Later\n\n    return Later"
    )
    (repo / "book/one.md").write_text(late)
    out = io.StringIO()
    assert t.tangle(repo, out=out) == 1  # written all the same
    assert problems(repo) == [
        "src/mlscratch/first.py:5: `from mlscratch.part.later import Later` imports "
        "src/mlscratch/part/later.py (from book/two.md) into book/one.md: "
        "book/two.md comes after book/one.md in _toc.yml"
    ]
    assert problems(repo)[0] in out.getvalue()
    assert t.tangle(repo, check=True, out=io.StringIO()) == 1
    assert t.main(["--root", str(repo), "--check"]) == 1


@pytest.mark.parametrize(
    ("code", "statement"),
    [
        ("from mlscratch.part import Later\n", "from mlscratch.part import Later"),
        ("from mlscratch.part import Alias\n", "from mlscratch.part import Alias"),
        ("from mlscratch.part import later\n", "from mlscratch.part import later"),
        ("import mlscratch.part.later as m\n", "import mlscratch.part.later as m"),
        (
            "x = 1\n\ndef g():\n    from mlscratch.part.later import Later\n",
            "from mlscratch.part.later import Later",
        ),
    ],
)
def test_a_demonstration_cell_importing_a_later_chapters_module_fails(repo, code, statement):
    (repo / "book/one.md").write_text(ONE + demonstration(code))
    line = len(ONE.splitlines()) + 3 + code.count("\n", 0, code.index("mlscratch"))
    assert problems(repo) == [
        f"book/one.md:{line}: `{statement}` imports src/mlscratch/part/later.py "
        "(from book/two.md) into book/one.md: book/two.md comes after book/one.md in _toc.yml"
    ]


@pytest.mark.parametrize(
    "code",
    [
        "from mlscratch.part import HERE\n",  # defined in the hand-written face itself
        "import mlscratch.part\n",  # the face: hand-written, outside the order
        "from mlscratch.first import f\n",  # an earlier chapter
        "from .later import Later\n",  # relative import in a cell: refers to nothing
        "import numpy as np\n",  # not ours
        "from mlscratch.part import Later\n!pip list\nfrom mlscratch.part import (\n",  # invalid
    ],
)
def test_imports_that_follow_the_order_or_are_outside_it_pass(repo, code):
    (repo / "book/one.md").write_text(ONE + demonstration(code))
    assert problems(repo) == []


def test_magics_are_blanked_before_parsing(repo):
    code = "%time x = 1\nfrom mlscratch.part import Later\n"
    (repo / "book/one.md").write_text(ONE + demonstration(code))
    assert len(problems(repo)) == 1 and "from mlscratch.part import Later" in problems(repo)[0]


def test_a_chapter_missing_from_the_toc_has_no_place_in_the_order(repo):
    (repo / "_toc.yml").write_text(TOC.replace("      - file: book/two\n", "      - file: x\n"))
    found = problems(repo)
    assert [message.split(" imports ")[0] for message in found] == [
        "book/two.md:18: `import mlscratch.first`",
        "src/mlscratch/part/later.py:4: `from mlscratch.first import f`",
    ]
    for message in found:
        assert message.endswith(
            ": book/two.md is not in _toc.yml, so it has no place in the reading order"
        )


def test_this_book_follows_its_reading_order(repo_root):
    """A module or cell of chapter k imports only modules tangled from chapters 1..k."""
    assert t.check_reading_order(repo_root) == []
