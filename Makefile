# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create (or reuse) .venv and install maskrl into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install run test test-slow bench gpu-check gpu-learn clean

# -qq: pip's errors only (the machine's extra indexes make pip warn about every project they lack).
# --no-compile: Python compiles a module's bytecode when it is first imported, so only what maskrl
# imports is compiled, not all of torch's CUDA build (measured: install 1 min 36 s -> 44 s). That
# needs bytecode to be written: an environment with PYTHONDONTWRITEBYTECODE set would recompile
# torch in every process (every Ray worker, every test), so it is unset for what make runs.
$(STAMP): setup.cfg pyproject.toml
	@echo "maskrl: installing into $(VENV) (first time, or after setup.cfg changed: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@$(PY) -m pip install -qq --no-compile -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/maskrl train --config configs/shapes_cpu.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py

# one table of a full-size random-init Show-o 512 on one GPU (bench/gpu_check.py; --tiny on CPU)
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

# make run's learning recipe at 10^5 rollouts on one GPU, held-out before/after (configs/shapes_gpu.yaml)
gpu-learn: $(STAMP)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make gpu-learn needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU, make run')"
	$(VENV)/bin/maskrl train --config configs/shapes_gpu.yaml

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
