# Every target does its own set-up on a fresh machine.
#   make test            set up .venv and run every test (kernel, plugins, contracts, tests/)
#   make demo            set up .venv and generate a picture with the embedded model
#   make bench           benchmark against Diffusers (make bench-quick for the short version)
# Override the torch requirement with e.g. `make test TORCH=torch`.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
EXAMPLES := $(sort $(dir $(wildcard examples/*/pyproject.toml)))
PYTEST_ARGS ?=

.PHONY: setup chromium test demo bench bench-quick clean

$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) $(wildcard contracts/pyproject.toml) $(wildcard examples/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q --no-build-isolation -e ".[test]" $(if $(wildcard contracts/pyproject.toml),-e ./contracts) $(foreach p,$(PLUGINS),-e ./$(p)) $(foreach p,$(EXAMPLES),-e ./$(p))
	touch $@

setup: $(VENV)/.installed

# The browser test of kernel serve drives Debian's Chromium; without it (no apt, not root) that test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		((apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 && echo "installed chromium") || \
		echo "note: chromium could not be installed; the kernel serve browser test will be skipped"

test: setup chromium
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS) tests $(wildcard contracts/tests) $(wildcard plugins/*/tests) $(wildcard examples/*/tests)

demo: setup
	$(VENV)/bin/kernel generate "a blue star at the center on a black background" --seed 0 --out demo.png

bench: setup
	$(PY) benchmarks/run.py

bench-quick: setup
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV)
