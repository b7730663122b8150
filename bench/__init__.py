"""Benchmarks (not tests): the gateway against the direct SDK call, measured in the same run.

Run `python -m bench.run_bench [--quick]` or `make bench`; see bench/README.md.
"""
