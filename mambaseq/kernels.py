"""Kernels behind ``core.selective_scan``: the C++ CPU scan and the Triton GPU kernels.

Knows nothing of modules; each kernel has its oracle in ``core.scan_reference``.
"""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

from mambaseq.kernels.cpu_scan import selective_scan_cpu
from mambaseq.kernels.scan_args import check_scan_args

__all__ = ["selective_scan_cpu", "check_scan_args", "selective_scan", "selective_state_update"]


def __getattr__(name):
    """Lazy Triton exports, so that importing ``mambaseq.kernels`` never imports triton."""
    if name == "selective_scan":
        from mambaseq.kernels.triton_scan import selective_scan
        return selective_scan
    if name == "selective_state_update":
        from mambaseq.kernels.triton_state_update import selective_state_update
        return selective_state_update
    raise AttributeError(f"module 'kernels' has no attribute '{name}'")
