# Sandbox FHIR servers (docs/sandbox.md). Included by the Makefile; uses its PY, STAMP and VENV.
#   make sandbox-deps                      install both servers (idempotent; a stamp check when done)
#   make sandbox                           start sekmet on 127.0.0.1:8090 with fixtures/ loaded
#   make sandbox SANDBOX_SERVER=medplum SANDBOX_PORT=8091 SANDBOX_LOAD=fixtures/
# Installs go to .sandbox/ (sekmet's own venv, logs) and sandbox/medplum/node_modules (Medplum + Node 22).

SANDBOX_SERVER ?= sekmet
SANDBOX_PORT   ?=
SANDBOX_LOAD   ?= fixtures/

.PHONY: sandbox sandbox-deps sandbox-system-deps sandbox-clean

# Debian packages the installers need when the machine lacks them: nodejs and npm, to fetch the
# Medplum packages and Node 22 (Node 22 itself comes from the npm registry, not from Debian).
sandbox-system-deps:
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm  >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "sandbox: installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

TEST_DEPS += sandbox-deps

## sandbox-deps: install both sandbox FHIR servers (sekmet, Medplum with Node 22)
sandbox-deps: $(STAMP) sandbox-system-deps
	@$(VENV)/bin/cds-service sandbox --install-only --server all

## sandbox: start a sandbox FHIR server loaded with the fixtures (SANDBOX_SERVER, SANDBOX_PORT)
sandbox: sandbox-deps
	$(VENV)/bin/cds-service sandbox --server $(SANDBOX_SERVER) $(if $(SANDBOX_PORT),--port $(SANDBOX_PORT)) \
	  $(if $(wildcard $(SANDBOX_LOAD)),--load $(SANDBOX_LOAD))

## sandbox-clean: remove the installed sandbox servers
sandbox-clean:
	rm -rf .sandbox sandbox/medplum/node_modules
