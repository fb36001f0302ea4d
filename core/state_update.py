"""One recurrent step of the selective SSM, for generation.

Dimension names: B batch, E d_inner, N d_state, G groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    """One step of ``selective_scan``; ``state`` is updated in place.

    Args:
        state: (B, E, N) fp32 state, overwritten with the new state.
        x, dt, z: (B, E). A: (E, N). B, C: (B, N) or grouped (B, G, N).
        D, dt_bias: (E,).

    Returns:
        y: (B, E) in x's dtype.
    """
    compute = state.dtype
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    d_inner = x.shape[1]
    if B.dim() == 2:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B = B.to(compute).repeat_interleave(d_inner // B.shape[1], dim=1)  # (B, E, N)
    C = C.to(compute).repeat_interleave(d_inner // C.shape[1], dim=1)  # (B, E, N)
    xc = x.to(compute)
    state.mul_(torch.exp(dt[..., None] * A.to(compute))).add_((dt * xc)[..., None] * B)
    y = (state * C).sum(-1)
    if D is not None:
        y = y + xc * D.to(compute)
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False):
    """One recurrent step, in place on ``state``; the Triton kernel on CUDA, PyTorch on CPU.

    Same arguments and result as :func:`selective_state_update_ref`.
    """
    if state.device.type == "cuda":
        from mambaseq.kernels import triton_state_update
        return triton_state_update.selective_state_update(
            state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                      dt_softplus=dt_softplus)
