# Two entry points: `make demo` (offline demo on the tiny model) and `make test`.
# Each creates .venv when missing. PyTorch comes from a local wheel when one is on disk
# (PIP_FIND_LINKS, /opt/wheels), else from TORCH_INDEX when set (e.g. the CPU index
# https://download.pytorch.org/whl/cpu), else from the default index.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
WHEEL_DIRS := $(subst :, ,$(PIP_FIND_LINKS)) /opt/wheels
LOCAL_TORCH := $(firstword $(wildcard $(addsuffix /torch-$(TORCH_VERSION)*.whl,$(WHEEL_DIRS))))
DEMO_MODEL ?= tiny
DEMO_OUT ?= demo-output

.PHONY: demo test lint format clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if [ -n "$(LOCAL_TORCH)" ]; then $(PY) -m pip install -q "$(LOCAL_TORCH)"; \
	  elif [ -n "$(TORCH_INDEX)" ]; then $(PY) -m pip install -q torch --index-url "$(TORCH_INDEX)"; \
	  else $(PY) -m pip install -q torch; fi; }
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/cleandift-rt demo --model $(DEMO_MODEL) --out-dir $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
