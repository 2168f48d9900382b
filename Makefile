# mtlkit: `make demo` trains the main model on built-in data; `make test` runs the test suite.
# Both create .venv on first use and install everything the project needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.14.1
STAMP := $(VENV)/.mtlkit-installed

.PHONY: demo test install lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the CUDA build compiles the extension; on a machine without nvcc the package
# installs pure-Python), then the package itself without build isolation so the extension is
# built against that torch.
$(STAMP): $(PY) setup.py pyproject.toml $(wildcard csrc/*)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "torch==$(TORCH_VERSION)" numpy pybind11 ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtlkit train --overwrite

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info mtlkit/_C*.so runs
