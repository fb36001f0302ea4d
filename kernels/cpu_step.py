"""Fast CPU recurrent step of a Mamba block: a C++ kernel (kernels/csrc/step_cpu.cpp),
compiled once on first use like the scan kernel (see ``kernels.cpu_build``).

Why C++: one token of a Mamba block is ~40 tiny tensor ops in PyTorch, each costing
microseconds of dispatch whatever its size, so at generation widths the step is dominated
by that overhead. The kernel does the four projections as BLAS calls and everything in
between (conv, SiLU, softplus, the state update, the gate) as two loops over the channels.

Dimension names: B batch, D d_model, E d_inner, N d_state, R dt_rank, K d_conv.
"""
from __future__ import annotations

import functools

from .cpu_build import load_kernel



@functools.lru_cache(maxsize=1)
def load_step_extension():
    """Import the C++ step kernel, building it first when this source, these flags, this
    torch and this CPU have no build yet. Raises RuntimeError naming what is missing."""
    return load_kernel("step_cpu.cpp", "mambaseq_step_cpu", "C++ CPU step kernel",
                       user="Mamba.step")


def mamba_step_cpu(x, conv, ssm, norm_weight, eps, add_residual, w_in, b_in, w_conv, b_conv,
                   w_x, w_dt, dt_bias, A, D, w_out, b_out, work):
    """One step of a Mamba block; see step_cpu.cpp for the layouts.

    Args:
        x (B, D): the block's input, or with ``norm_weight`` the residual stream, which is
            RMS-normalised (``eps``) first and, with ``add_residual``, returned with the
            block's output added in place.
        conv (B, E, K-1), ssm (B, E, N): the cache, updated in place.
        the block's weights (biases may be None); A (E, N) = -exp(A_log); D (E,).
        work: scratch with tensors ``xn, xz, xc, dbc, dt, y`` (see ``core.mamba.StepWork``).
    Returns:
        (B, D): a new tensor, or ``x`` itself with ``add_residual``.
    """
    return load_step_extension().mamba_step(
        x, conv, ssm, norm_weight, eps, add_residual, w_in, b_in, w_conv, b_conv, w_x, w_dt,
        dt_bias, A, D, w_out, b_out, work.xn, work.xz, work.xc, work.dbc, work.dt, work.y)
