# Two commands on a fresh machine:  make serve   |   make test
# Everything the service and its tests need is installed from here (Python venv, system packages).

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# Debian packages the test suite drives for real (browser tests, benchmarks, load balancer tests).
SYSTEM_PACKAGES ?= chromium chromium-driver

.PHONY: serve serve-dev test lint venv system-deps venv-system-deps clean help

help:
	@echo "make serve   - create .venv, install, start the service on 127.0.0.1:8080 (development defaults)"
	@echo "make test    - install everything the tests need and run the whole suite"
	@echo "make sandbox - start a sandbox FHIR server loaded with the fixtures"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || $(MAKE) --no-print-directory venv-system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# `make serve` runs production gunicorn with development defaults: JWT verification off,
# CORS open to browser simulators, console on, FHIR calls to loopback only. See README.
serve: $(STAMP)
	CDS_ENV=$${CDS_ENV:-development} $(VENV)/bin/cds-service serve

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

system-deps:
	$(call apt-install,$(SYSTEM_PACKAGES))

# Debian splits ensurepip (needed by `python3.11 -m venv`) into its own package.
venv-system-deps:
	$(call apt-install,python3.11-venv)

lint: $(STAMP)
	$(VENV)/bin/ruff check cds_service tests

test: $(STAMP) system-deps sandbox-deps
	$(VENV)/bin/ruff check cds_service tests
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

-include mk/*.mk
