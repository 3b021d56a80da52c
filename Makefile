# Entry points: `make demo` (offline demo on the bundled toy model; the core install only),
# `make test` (the full suite; the [dev] extra) and `make test-quick` (the suite without tests
# marked slow). Each creates .venv when missing. PyTorch comes from a local wheel when one is on disk
# (PIP_FIND_LINKS, /opt/wheels), else from TORCH_INDEX when set (e.g. the CPU index
# https://download.pytorch.org/whl/cpu), else from the default index.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
WHEEL_DIRS := $(subst :, ,$(PIP_FIND_LINKS)) /opt/wheels
LOCAL_TORCH := $(firstword $(wildcard $(addsuffix /torch-$(TORCH_VERSION)*.whl,$(WHEEL_DIRS))))
DEMO_MODEL ?= toy
DEMO_OUT ?= demo-output

.PHONY: demo test test-quick test-cpp lint format clean toy-weights

define venv_with_torch
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if [ -n "$(LOCAL_TORCH)" ]; then $(PY) -m pip install -q "$(LOCAL_TORCH)"; \
	  elif [ -n "$(TORCH_INDEX)" ]; then $(PY) -m pip install -q torch --index-url "$(TORCH_INDEX)"; \
	  else $(PY) -m pip install -q torch; fi; }
endef

# the core install: what `demo` and `eval homography` need (sample photos ship in the package)
$(VENV)/.core: pyproject.toml
	$(venv_with_torch)
	$(PY) -m pip install -q -e .
	@touch $@

# the full development install (tests, lint, ONNX, Triton, scikit-image, pybind11)
$(VENV)/.installed: pyproject.toml
	$(venv_with_torch)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(VENV)/bin/cleandift-rt demo --model $(DEMO_MODEL) --out-dir $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-quick: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu and not tensorrt"

# C++ library (cpp_bindings/): configure with the venv's torch (libtorch) and pybind11, build,
# run ctest, then the pytest parity tests of its Python bindings.
CPP_BUILD ?= cpp_bindings/build
CPP_JOBS ?= 2
CPP_GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

test-cpp: $(VENV)/.installed
	@test -f $(CPP_BUILD)/CMakeCache.txt || cmake -S cpp_bindings -B $(CPP_BUILD) $(CPP_GENERATOR) \
	  -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build $(CPP_BUILD) -j $(CPP_JOBS)
	ctest --test-dir $(CPP_BUILD) --output-on-failure
	CLEANDIFT_RT_CPP_BUILD=$(abspath $(CPP_BUILD))/python $(PY) -m pytest -q tests/test_cpp_bindings.py

# Regenerate the bundled toy weights (cleandift_rt/models/toy/) from scratch on this machine:
# gather the Debian photos (needs `apt-get update` once; no root install), pretrain the toy SD
# from scratch on them and scikit-image's (VAE, then U-Net), install it as `toy-base`, distil
# `toy` from it, install the student. One thread: bit-exact reruns on one machine (and the
# fastest on a shared 2-core CPU); more threads change the last bits of the weights.
TOY_RUN ?= runs/toy
TOY_THREADS ?= 1
TOY_ENV := OMP_NUM_THREADS=$(TOY_THREADS) MKL_NUM_THREADS=$(TOY_THREADS)
TOY_SOURCES := python -m training.toy_sources --cache $(TOY_RUN) --out $(TOY_RUN)/sources
TOY_PRETRAIN := python -m training.pretrain_toy --out $(TOY_RUN)/pretrain \
  --images $(TOY_RUN)/sources/train --vae-steps 1500 --unet-steps 3000 --unet-crop 192 \
  --unet-batch 12 --save-every 250
TOY_DISTILL := python -m training.distill --teacher toy-base --data $(TOY_RUN)/photos \
  --out $(TOY_RUN)/distill --steps 400 --batch-size 8 --lr 1e-4 --warmup 40 --workers 0 \
  --save-every 50 --val-every 100

toy-weights: $(VENV)/.installed
	$(VENV)/bin/$(TOY_SOURCES)
	$(TOY_ENV) $(VENV)/bin/$(TOY_PRETRAIN)
	$(PY) -m training.toy_release base --from $(TOY_RUN)/pretrain/model --command "$(TOY_PRETRAIN)"
	$(PY) -m training.toy_photos $(TOY_RUN)/photos --crops 8 --size 256 \
	  --images $(TOY_RUN)/sources/train
	$(TOY_ENV) $(VENV)/bin/$(TOY_DISTILL)
	$(PY) -m training.toy_release student --command "$(TOY_DISTILL)" \
	  --from $(TOY_RUN)/distill/cleandift_toy-base_unet.safetensors

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache $(CPP_BUILD)
