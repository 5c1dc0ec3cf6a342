# Multi-instance deployment (docs/deployment.md). Included by the Makefile; uses its VENV and STAMP.
#   make cluster-deps    install nginx (and the PostgreSQL server binaries) from Debian if missing,
#                        with service start suppressed (no nginx left running on port 80)
#   make test-cluster    only the multi-instance tests (tests/cluster): real gunicorn instances, nginx,
#                        a throwaway PostgreSQL cluster; SIGKILL failover and database restart under load
#   make cluster-bench   throughput of 1 vs 2 instances behind nginx (not part of `make test`; ~1 min of
#                        full CPU: run it on an otherwise idle machine)
#   make migrate         upgrade the database schema to the latest revision (cds-service migrate)
#
# tests/cluster is part of the default pytest run, so `make test` needs nginx too: cluster-deps is
# added as a prerequisite of system-deps below (it runs first, so nginx is never installed unguarded).
#
# Why the guard: the Debian nginx postinst runs `invoke-rc.d nginx start` (systemd or sysv), which would
# start a system nginx on port 80 on a developer's machine. invoke-rc.d asks /usr/sbin/policy-rc.d
# first; exit status 101 means "action forbidden". If the machine has no policy-rc.d we install one for
# the duration of the apt-get call and remove it afterwards (an existing one is left untouched).
# The tests never use the system nginx: they start their own with a config in a temporary directory.

CLUSTER_PACKAGES ?= nginx
# The failover tests run their own throwaway PostgreSQL cluster (initdb/pg_ctl): the server binaries
# are installed too when missing (e.g. the shared PostgreSQL runs in a container). Same guard: the
# package's default cluster is created but not started.
CLUSTER_PG_PACKAGE ?= postgresql

.PHONY: cluster-deps test-cluster cluster-bench migrate

## cluster-deps: install nginx and the PostgreSQL server binaries (service start suppressed)
cluster-deps:
	@missing=""; for p in $(CLUSTER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	  || missing="$$missing $(CLUSTER_PG_PACKAGE)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing (service start suppressed)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  guard=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# temporary, from mk/cluster.mk: do not start services during this install\nexit 101\n' \
	      | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null && $$SUDO chmod 755 /usr/sbin/policy-rc.d && guard=1; \
	    trap '[ -n "$$guard" ] && $$SUDO rm -f /usr/sbin/policy-rc.d' EXIT INT TERM; \
	  fi; \
	  status=0; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null || status=$$?; \
	  exit $$status; \
	fi

TEST_DEPS += cluster-deps

## test-cluster: only the multi-instance tests (real gunicorn instances, nginx, PostgreSQL)
test-cluster: $(STAMP) cluster-deps
	$(VENV)/bin/pytest -q tests/cluster

CLUSTER_BENCH_ARGS ?= --seconds 8 --workers 1 2

## cluster-bench: throughput of 1 vs 2 instances behind nginx (idle machine)
cluster-bench: $(STAMP) cluster-deps
	$(PY) -m tests.cluster.bench_scaleout $(CLUSTER_BENCH_ARGS)

## migrate: upgrade the database schema to the latest revision
migrate: $(STAMP)
	$(VENV)/bin/cds-service migrate
