"""``core.selective_scan``: the one op the toolkit stands on, dispatched by device.

Backends (chosen by the tensors' device, never by the caller):
    cpu   -> kernels.cpu_scan.selective_scan_cpu   (C++ kernel, autograd)
    cuda  -> kernels.selective_scan                (Triton kernels, autograd)
The executable specification of both is ``core.scan_reference.selective_scan_ref``.
"""
from __future__ import annotations

import logging

import torch

from mambaseq.kernels.scan_args import check_scan_args

log = logging.getLogger(__name__)
_announced = set()


def _backend_for(device):
    if device.type == "cpu":
        from mambaseq.kernels.cpu_scan import selective_scan_cpu
        return "cpu (C++ kernel)", selective_scan_cpu
    if device.type == "cuda":
        from mambaseq.kernels import triton_scan
        return "triton", triton_scan.selective_scan
    raise NotImplementedError(
        f"selective_scan: no backend for device type '{device.type}' (supported: cpu, cuda); "
        "core.scan_reference.selective_scan_ref runs anywhere, slowly")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Mamba-1 selective scan with initial state in, final state out, gradients for all.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,   y_t *= silu(z_t)

    Args:
        u, delta: (B, E, L). z: (B, E, L) gate, optional.
        A: (E, N). B, C: (B, N, L) or grouped (B, G, N, L), G dividing E.
        D, delta_bias: (E,), optional. delta_softplus: softplus(delta + delta_bias).
        initial_state: (B, E, N), optional (zeros).
        return_final_state: also return the (B, E, N) state after the last step.

    Returns:
        y (B, E, L) in u's dtype (computed in fp32, or fp64 for fp64 inputs), or
        (y, final_state) with final_state in the compute dtype.

    >>> b, e, n, length = 2, 8, 4, 64
    >>> u, z, B, C = (torch.randn(b, e, length), torch.randn(b, e, length),
    ...               torch.randn(b, n, length), torch.randn(b, n, length))
    >>> delta, A, D = torch.rand(b, e, length) / 10, -torch.rand(e, n), torch.randn(e)
    >>> y, h = selective_scan(u, delta, A, B, C, D, z, return_final_state=True)
    >>> y.shape, h.shape                                   # (B, E, L), (B, E, N)
    (torch.Size([2, 8, 64]), torch.Size([2, 8, 4]))
    >>> s, t = slice(0, 40), slice(40, None)               # the same sequence in two chunks
    >>> y1, h1 = selective_scan(u[..., s], delta[..., s], A, B[..., s], C[..., s], D, z[..., s],
    ...                         return_final_state=True)
    >>> y2 = selective_scan(u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
    ...                     initial_state=h1)              # continues from h1
    >>> torch.allclose(torch.cat([y1, y2], -1), y, atol=1e-5)
    True
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name, scan = _backend_for(u.device)
    if name not in _announced and not torch.compiler.is_compiling():  # no graph break
        _announced.add(name)
        log.info("selective_scan: backend %s", name)
    return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                delta_softplus=delta_softplus, initial_state=initial_state,
                return_final_state=return_final_state)
