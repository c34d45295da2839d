# Quickstart: `make demo` runs the main job, `make test` runs the test suite.
# Both create ./.venv on first use and install edgeguard into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-fast lint typecheck kernels bench mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'tensorrt-stubs>=10,<11'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeguard demo

test: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

# Real third-party models end to end (fetched once from PyPI wheels), cross-compiles: CI runs these.
test-slow: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps rapidocr-onnxruntime==1.4.4
	$(BIN)/python -m pytest -m slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' -x -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps rapidocr-onnxruntime==1.4.4 skl2onnx==1.20.0
	for b in benchmarks/bench_*.py; do case $$b in *mutation*) continue;; esac; echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Mutation score of the security modules ([tool.mutmut] in pyproject.toml); slow (about
# an hour on two cores). Writes a benchmark record; RESULTS.md shows the score.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut>=3.3,<4'
	$(BIN)/python benchmarks/bench_mutation.py

kernels:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j2
	ctest --test-dir build --output-on-failure

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache mutants
