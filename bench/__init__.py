"""Benchmark suite of the CDS service: `make bench` (see docs/benchmarks.md and bench/README.md)."""
