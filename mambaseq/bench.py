"""Benchmarks: ``python -m mambaseq.bench.NAME`` (scan_cpu, scan_gpu, gpu_check, train, ...)."""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

