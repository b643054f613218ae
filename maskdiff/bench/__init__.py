"""Benchmarks behind ``maskdiff bench``: ``train.py`` (training throughput and model FLOPs utilisation)."""
