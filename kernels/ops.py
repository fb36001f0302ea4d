"""The scan kernels as torch custom ops (``torch.ops.mambaseq.*``), each with a fake
implementation that gives the shapes and dtypes of its outputs without running it.

Why: ``torch.compile`` cannot look inside a C++ extension call or a Triton launch, so a
Mamba block that calls them directly breaks the compiled graph at every scan. As custom ops
with fake implementations they are opaque nodes that dynamo traces through with fake
tensors, and the compiled graph of a whole ``MambaLM`` has no break. The autograd wrappers
(``kernels.cpu_scan``, ``kernels.triton_scan``) call these ops for their forward and
backward, so the backward graph traces the same way.

Dimension names: B batch, E d_inner, N d_state, G groups, L length, T chunk, K chunks.

    cpu_scan_fwd / cpu_scan_bwd         the C++ kernel (arguments already contiguous, in the
                                        compute dtype, B/C time-major (B, G, L, N))
    triton_scan_fwd / triton_scan_bwd   the Triton kernels (B/C grouped (B, G, N, L))
    triton_state_update                 one recurrent step, in place on ``state``

Absent optional outputs (dz without a gate, dD without D, ...) come back as empty tensors:
an op returns tensors only.

Strides: under ``torch.compile`` inductor may hand an op a tensor whose layout differs from
the eager one (padded strides, say), so the C++ ops make their inputs contiguous (free when
they already are) and every op, real or fake, returns contiguous outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _n_chunks(length, chunk):
    return (length + chunk - 1) // chunk


def _empty(like):
    return like.new_empty(0)


# -- C++ CPU kernel -------------------------------------------------------------------------
@torch.library.custom_op("mambaseq::cpu_scan_fwd", mutates_args=())
def cpu_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                 z: Tensor, delta_bias: Tensor, h0: Tensor, delta_softplus: bool, has_z: bool,
                 chunk: int, save_checkpoints: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> y (B, E, L), final state (B, E, N), states entering each chunk (B, E, K, N) (or an
    empty tensor unless ``save_checkpoints``)."""
    from .cpu_scan import load_cpu_extension

    dense = [t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias, h0)]
    y, final_state, ckpt = load_cpu_extension().scan_fwd(*dense, delta_softplus, has_z, chunk,
                                                          save_checkpoints)
    return y, final_state, ckpt


@cpu_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, has_z, chunk, save_checkpoints):
    batch, d_inner, length = u.shape
    ckpt_shape = ((batch, d_inner, _n_chunks(length, chunk), A.shape[1]) if save_checkpoints
                  else (0,))
    return u.new_empty(u.shape), h0.new_empty(h0.shape), u.new_empty(ckpt_shape)


@torch.library.custom_op("mambaseq::cpu_scan_bwd", mutates_args=())
def cpu_scan_bwd(dy: Tensor, d_final: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                 C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor, h0: Tensor, ckpt: Tensor,
                 delta_softplus: bool, has_z: bool, chunk: int) -> list[Tensor]:
    """-> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dh0], shaped as their inputs
    (dz empty without a gate)."""
    from .cpu_scan import load_cpu_extension

    dense = [t.contiguous() for t in (dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0,
                                      ckpt)]
    return list(load_cpu_extension().scan_bwd(*dense, delta_softplus, has_z, chunk))


@cpu_scan_bwd.register_fake
def _(dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0, ckpt, delta_softplus, has_z, chunk):
    def like(t):
        return t.new_empty(t.shape)

    return [like(u), like(u), like(u) if has_z else _empty(u), like(A), like(B), like(C),
            like(D), like(delta_bias), like(h0)]


# -- Triton kernels -------------------------------------------------------------------------
@torch.library.custom_op("mambaseq::triton_scan_fwd", mutates_args=())
def triton_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                    initial_state: Optional[Tensor], delta_softplus: bool,
                    save_checkpoints: bool, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> y (B, E, L) in u's dtype, final state (B, E, N) fp32, chunk states (B, E, K, N)
    fp32 (K = 0 unless ``save_checkpoints``)."""
    from .triton_scan import _scan_fwd

    return _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                     save_checkpoints, chunk)


@triton_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_checkpoints,
      chunk):
    batch, d_inner, length = u.shape
    f32 = {"dtype": torch.float32}
    n = _n_chunks(length, chunk) if save_checkpoints else 0
    return (u.new_empty(u.shape),
            u.new_empty(batch, d_inner, A.shape[1], **f32),
            u.new_empty(batch, d_inner, n, A.shape[1], **f32))


@torch.library.custom_op("mambaseq::triton_scan_bwd", mutates_args=())
def triton_scan_bwd(dy: Tensor, d_final: Tensor, u: Tensor, delta: Tensor, A: Tensor,
                    B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                    delta_bias: Optional[Tensor], ckpt: Tensor, delta_softplus: bool,
                    chunk: int) -> list[Tensor]:
    """-> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dh0], all fp32; the ones of absent
    inputs (z, D, delta_bias) empty."""
    from .triton_scan import _scan_bwd

    grads = _scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                      chunk)
    return [g if g is not None else _empty(u) for g in grads]


@triton_scan_bwd.register_fake
def _(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus, chunk):
    def f32(shape, present=True):
        return u.new_empty(shape if present else (0,), dtype=torch.float32)

    batch, d_inner, length = u.shape
    return [f32(u.shape), f32(u.shape), f32(u.shape, z is not None), f32(A.shape),
            f32(B.shape), f32(C.shape), f32((d_inner,), D is not None),
            f32((d_inner,), delta_bias is not None), f32((batch, d_inner, A.shape[1]))]


@torch.library.custom_op("mambaseq::triton_state_update", mutates_args=("state",))
def triton_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
                        dt_softplus: bool) -> Tensor:
    """One recurrent step: ``state`` (B, E, N) updated in place; -> y (B, E) in x's dtype."""
    from .triton_state_update import _launch_state_update

    return _launch_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@triton_state_update.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape[0], x.shape[1])
