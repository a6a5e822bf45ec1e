"""Benchmarks of bigmachine against Ray, Dask and a multiprocessing pipe.

Run ``python -m benchmarks.run --help``; see ``benchmarks/README.md``.
"""
