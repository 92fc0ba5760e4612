# Machine Learning from Scratch: the two commands are `make book` and `make test`.
# Everything is installed into a local virtual environment (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; install it first so that `torch>=2.4` is already met and
# pip never downloads a multi-GB CUDA build. Override for CUDA: make TORCH=torch setup
TORCH ?= torch==2.13.0
comma := ,
EXTRAS ?= book,test
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
BOOKFLAGS ?=
PYTEST_ARGS ?=

# Python files formatted by `ruff format`; the generated modules in src/ are formatted
# through their chapters (`tangle.py --format`), the hand-written ones directly.
FORMATTED := src tests bench book/_ext
HAND_WRITTEN = $(shell find src -name __init__.py -o -name __main__.py)

.PHONY: setup book test tangle check format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)  ## create .venv and install the package with its book and test extras

tangle: $(STAMP)  ## rewrite the generated modules in src/ from the chapters in book/
	$(PY) src/mlscratch/tangle.py

check: $(STAMP)  ## src/ matches book/, cells <= 60 lines, imports in reading order; lint; format
	$(PY) src/mlscratch/tangle.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check $(FORMATTED)

format: $(STAMP)  ## format the chapters' code cells and the hand-written files, then re-tangle
	$(PY) src/mlscratch/tangle.py --format
	$(VENV)/bin/ruff format tests bench book/_ext $(HAND_WRITTEN)
	$(PY) src/mlscratch/tangle.py

book: check  ## execute the chapters and build the HTML book into _build/html
	$(VENV)/bin/jupyter-book build . $(BOOKFLAGS)
	@echo "Open _build/html/index.html in a browser."

test: $(STAMP)  ## run the test suite; the 15 slowest tests are listed at the end
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)  ## run the benchmarks (minutes); results go to bench/results/
	$(PY) bench/run_all.py

clean:
	rm -rf _build
