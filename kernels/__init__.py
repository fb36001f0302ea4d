"""Kernels behind ``core.selective_scan``: the C++ CPU scan and the Triton GPU kernels.

Knows nothing of modules; each kernel has its oracle in ``core.scan_reference``.
"""
from .cpu_scan import selective_scan_cpu
from .scan_args import check_scan_args

__all__ = ["selective_scan_cpu", "check_scan_args"]
