# Benchmark suite (docs/benchmarks.md, bench/README.md). Included by the Makefile; uses its VENV, PY, PIP, STAMP.
#   make bench          install wrk (Debian) and pyinstrument (PyPI, pinned) when missing, run every workload
#                       (about 8 minutes, bounded), write docs/benchmarks.{md,json}, docs/benchmarks-*.svg and
#                       docs/benchmarks-profile.txt. Run it on a quiet machine: the report records the load average.
#   make bench-quick    the same with short runs, written to $(BENCH_QUICK_OUT) (a smoke test, not for the record)
#   make bench-report   re-render docs/benchmarks.md and the charts from docs/benchmarks.json
# Knobs (environment): BENCH_DURATION (s per wrk run, 10), BENCH_WARMUP (2), BENCH_SIZES, BENCH_W3_BUDGET (8),
# BENCH_BASELINE=0 (skip the "before" tree), BENCH_BASELINE_REF, BENCH_ONLY=throughput,traffic,w3,w4,profile,baseline
# (traffic = W5, W6 and the repeated body; `BENCH_ONLY=traffic,profile,baseline make bench` is the issue-16 subset, ~6 min).

BENCH_DEBIAN_PACKAGES ?= wrk
BENCH_PIP_PACKAGES ?= pyinstrument==5.1.3
BENCH_QUICK_OUT ?= /tmp/cds-bench-quick

.PHONY: bench bench-deps bench-quick bench-report

bench-deps: $(STAMP)
	$(call apt-install,$(BENCH_DEBIAN_PACKAGES))
	@$(PY) -c "import pyinstrument" 2>/dev/null || { echo "bench: installing $(BENCH_PIP_PACKAGES)"; $(PIP) install --quiet $(BENCH_PIP_PACKAGES); }

## bench: run every benchmark workload and write docs/benchmarks.md (quiet machine, ~8 min)
bench: bench-deps
	$(PY) -m bench.run

## bench-quick: the same with short runs, to $(BENCH_QUICK_OUT) (smoke test)
bench-quick: bench-deps
	mkdir -p $(BENCH_QUICK_OUT)
	BENCH_DURATION=$${BENCH_DURATION:-3} BENCH_WARMUP=$${BENCH_WARMUP:-1} BENCH_W3_BUDGET=$${BENCH_W3_BUDGET:-3} \
	  $(PY) -m bench.run --out $(BENCH_QUICK_OUT)

## bench-report: re-render docs/benchmarks.md and charts from docs/benchmarks.json
bench-report: $(STAMP)
	$(PY) -m bench.report docs
