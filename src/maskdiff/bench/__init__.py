"""Benchmarks behind ``maskdiff bench``: each prints its figures and writes them as JSON (and a PNG)."""
