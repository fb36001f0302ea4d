"""Plain sequential selective scan: the executable specification of every backend.

Dimension names used throughout the toolkit:
    B batch, E d_inner (channels), N d_state, G groups of B/C, L sequence length.

This loop is slow on purpose: every fast path (the C++ CPU kernel, the Triton
kernels) is tested against it, in fp32 and in fp64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None, return_final_state=False):
    """Mamba-1 selective scan, one step at a time.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,   y_t *= silu(z_t)

    Args:
        u: (B, E, L) input.
        delta: (B, E, L) step sizes (before ``delta_bias`` and softplus).
        A: (E, N) state matrix (diagonal per channel, usually negative).
        B, C: (B, N, L), or grouped (B, G, N, L) where group g serves channels
            [g*E/G, (g+1)*E/G).
        D: (E,) skip connection, optional.
        z: (B, E, L) gate, optional: the output is multiplied by silu(z).
        delta_bias: (E,) added to delta before softplus, optional.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: (B, E, N) state before the first step, zeros if None.
        return_final_state: also return the state after the last step.

    Returns:
        y (B, E, L) in u's dtype, or (y, final_state) with final_state (B, E, N) in fp32
        (fp64 when the inputs are fp64).
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    out_dtype = u.dtype
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]
    B = B.repeat_interleave(d_inner // groups, dim=1)  # (B, E, N, L)
    C = C.repeat_interleave(d_inner // groups, dim=1)  # (B, E, N, L)

    if initial_state is None:
        h = u.new_zeros(batch, d_inner, d_state)
    else:
        h = initial_state.to(compute)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)                      # (B, E, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))                                # (B, E)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d_inner, 0)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(out_dtype)
    return (y, h) if return_final_state else y
