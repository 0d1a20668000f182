"""Benchmarks of the ambient trainer: kernel microbenchmarks, trainer throughput, regression check."""
