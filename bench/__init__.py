"""Benchmarks: each `python -m bench.NAME` runs one measurement, prints a table and writes
`bench/results/NAME.json`; the tables with their commands are kept in `bench/RESULTS.md`.
Performance numbers live here, never as timed asserts in tests."""
