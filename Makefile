# Two commands on a fresh machine:  make serve   |   make test
# Everything the service and its tests need is installed from here (Python venv, system packages).

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# Debian packages the test suite drives for real (browser tests). mk/*.mk fragments add theirs with +=.
SYSTEM_PACKAGES ?= chromium chromium-driver
# Targets `make test` depends on; mk/*.mk fragments add their installers here (TEST_DEPS += ...).
TEST_DEPS = $(STAMP) system-deps
# The tiers `make test-fast` leaves out (pytest markers set in tests/conftest.py).
SLOW_TIERS = not postgres and not browser and not sandbox and not cluster and not population

.PHONY: serve serve-dev test test-fast lint venv system-deps venv-system-deps clean help

## help: list every target with what it does
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed -e 's/^## //' | awk -F': ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || $(MAKE) --no-print-directory venv-system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

## venv: create .venv and install the package with its test extras
venv: $(STAMP)

## serve: create .venv, install, start the service on 127.0.0.1:8080 (development defaults)
# `make serve` runs production gunicorn with development defaults: JWT verification off,
# CORS open to browser simulators, console on, FHIR calls to loopback only. See README.
serve: $(STAMP)
	CDS_ENV=$${CDS_ENV:-development} $(VENV)/bin/cds-service serve

## serve-dev: the same on Flask's single-process development server
serve-dev: $(STAMP)
	CDS_ENV=development $(VENV)/bin/cds-service serve --dev

# $(call apt-install,PACKAGES): install those Debian packages that are missing (root, or sudo).
# Used by every target here and in mk/*.mk that needs a system package.
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

## system-deps: install the Debian packages the full test suite drives
system-deps:
	$(call apt-install,$(SYSTEM_PACKAGES))

# Debian splits ensurepip (needed by `python3.11 -m venv`) into its own package.
venv-system-deps:
	$(call apt-install,python3.11-venv)

## lint: ruff over the package, tests and benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check cds_service tests bench

## clean: remove the virtual environment and caches
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

-include mk/*.mk

# After the fragments: a rule's prerequisites are expanded when it is read, so TEST_DEPS is complete here.
## test: install everything (system packages included) and run the whole suite (what CI runs)
test: $(TEST_DEPS)
	$(VENV)/bin/ruff check cds_service tests bench
	$(VENV)/bin/pytest -q

## test-fast: Python + SQLite only (no PostgreSQL, Chromium, Node or nginx) - a few minutes, while you work
test-fast: $(STAMP)
	$(VENV)/bin/ruff check cds_service tests bench
	$(VENV)/bin/pytest -q -m "$(SLOW_TIERS)"
