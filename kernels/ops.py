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
    triton_scan_fwd / triton_scan_bwd   the Triton kernels (B/C grouped (B, G, N, L); the
                                        ScanConfig passed as its six ints)
    triton_state_update                 one recurrent step, in place on ``state``

Absent optional outputs (dz without a gate, dD without D, ...) come back as empty tensors:
an op returns tensors only.

Registered with ``torch.library.Library`` rather than ``torch.library.custom_op``, whose
kernels import ``torch._dynamo`` (and with it triton) on their first eager call: the CPU
path must not pay for that.

Strides: under ``torch.compile`` inductor may hand an op a tensor whose layout differs from
the eager one (padded strides, say). The C++ kernel reads its sequences through their
strides and makes the small tensors it reads by pointer contiguous; its fakes give the
layouts the kernel gives (``_layout_of``), the Triton fakes contiguous outputs as theirs.
"""
from __future__ import annotations

import torch

# FRAGMENT, and ops already defined are kept: in a checkout on sys.path this file can be
# imported twice, as mambaseq.kernels.ops and as kernels.ops (transformers probes for a
# "kernels" package that way).
_LIB = torch.library.Library("mambaseq", "FRAGMENT")   # kept alive: it owns the registrations
ALL_BACKENDS = "CompositeExplicitAutograd"      # the Triton ops: CUDA, and CPU when interpreted


def _register(schema, kernel, fake, dispatch_key="CPU"):
    """Define ``mambaseq::<schema>`` with ``kernel`` and its fake; returns the op overload."""
    name = schema.split("(")[0]
    if hasattr(torch.ops.mambaseq, name):
        return getattr(torch.ops.mambaseq, name).default
    _LIB.define(schema)
    _LIB.impl(name, kernel, dispatch_key)
    torch.library.register_fake(f"mambaseq::{name}", fake, lib=_LIB)
    return getattr(torch.ops.mambaseq, name).default


def _n_chunks(length, chunk):
    return (length + chunk - 1) // chunk


def _empty(like):
    return like.new_empty(0)


def _dense_like(t):
    return t.new_empty(t.shape)


# -- C++ CPU kernel -------------------------------------------------------------------------
def _layout_of(like):
    """An empty (B, E, L) tensor laid out as the C++ kernel lays out its outputs
    (``empty_in_layout_of``): time-major when ``like``'s time stride is the larger, else
    channel-major. The fakes must give the strides the kernel gives."""
    if like.stride(2) > like.stride(1) and like.shape[1] > 1:
        return like.new_empty(like.shape[0], like.shape[2], like.shape[1]).transpose(1, 2)
    return like.new_empty(like.shape)


def _cpu_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, has_z, chunk,
                  save_checkpoints):
    from .cpu_scan import load_cpu_extension

    # The kernel reads u, delta, z, B and C through their strides; the rest by pointer.
    small = [t.contiguous() for t in (A, D, delta_bias, h0)]
    A, D, delta_bias, h0 = small
    y, final_state, ckpt = load_cpu_extension().scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, has_z, chunk,
        save_checkpoints)
    return y, final_state, ckpt


def _cpu_scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, has_z, chunk,
                       save_checkpoints):
    batch, d_inner, length = u.shape
    ckpt_shape = ((batch, d_inner, _n_chunks(length, chunk), A.shape[1]) if save_checkpoints
                  else (0,))
    return _layout_of(z if has_z else u), _dense_like(h0), u.new_empty(ckpt_shape)


cpu_scan_fwd = _register(
    "cpu_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
    "Tensor delta_bias, Tensor h0, bool delta_softplus, bool has_z, int chunk, "
    "bool save_checkpoints) -> (Tensor, Tensor, Tensor)", _cpu_scan_fwd, _cpu_scan_fwd_fake)
# cpu_scan_fwd: the C++ forward (inputs in the compute dtype, B/C (B, G, N, L)) -> y (B, E,
# L) laid out like z (like u without a gate), final state (B, E, N), states entering each
# chunk (B, E, K, N) (empty unless ``save_checkpoints``).


def _cpu_scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0, ckpt, delta_softplus,
                  has_z, chunk, partial_budget):
    from .cpu_scan import load_cpu_extension

    d_final, A, D, delta_bias, h0, ckpt = [t.contiguous()
                                           for t in (d_final, A, D, delta_bias, h0, ckpt)]
    return list(load_cpu_extension().scan_bwd(dy, d_final, u, delta, A, B, C, D, z,
                                              delta_bias, h0, ckpt, delta_softplus, has_z,
                                              chunk, partial_budget))


def _cpu_scan_bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0, ckpt,
                       delta_softplus, has_z, chunk, partial_budget):
    batch, groups, d_state, length = B.shape
    bc_grad = u.new_empty(batch, groups, length, d_state)
    return [_layout_of(u), _layout_of(delta), _layout_of(z) if has_z else _empty(u),
            _dense_like(A), bc_grad, bc_grad.new_empty(bc_grad.shape), _dense_like(D),
            _dense_like(delta_bias), _dense_like(d_final)]


cpu_scan_bwd = _register(
    "cpu_scan_bwd(Tensor dy, Tensor d_final, Tensor u, Tensor delta, Tensor A, Tensor B, "
    "Tensor C, Tensor D, Tensor z, Tensor delta_bias, Tensor h0, Tensor ckpt, "
    "bool delta_softplus, bool has_z, int chunk, int partial_budget) -> Tensor[]",
    _cpu_scan_bwd, _cpu_scan_bwd_fake)
# cpu_scan_bwd: the C++ backward -> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dh0]; du,
# ddelta, dz laid out like u, delta, z (dz empty without a gate), dB and dC time-major
# (B, G, L, N).


# -- Triton kernels -------------------------------------------------------------------------
def _triton_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                     save_checkpoints, *config):
    from .triton_scan import ScanConfig, _scan_fwd

    return _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                     save_checkpoints, ScanConfig(*config))


def _triton_scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                          save_checkpoints, block_n, chunk, *rest_of_config):
    batch, d_inner, length = u.shape
    n = _n_chunks(length, chunk) if save_checkpoints else 0
    return (_dense_like(u), u.new_empty(batch, d_inner, A.shape[1], dtype=torch.float32),
            u.new_empty(batch, d_inner, n, A.shape[1], dtype=torch.float32))


triton_scan_fwd = _register(
    "triton_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, "
    "bool save_checkpoints, int block_n, int chunk, int block_e_fwd, int block_e_bwd, "
    "int num_warps_fwd, int num_warps_bwd) -> (Tensor, Tensor, Tensor)", _triton_scan_fwd,
    _triton_scan_fwd_fake, ALL_BACKENDS)
# triton_scan_fwd: The Triton forward (B/C (B, G, N, L)) -> y (B, E, L) in u's dtype,
# final state (B, E, N) fp32, chunk states (B, E, K, N) fp32 (K = 0 unless
# ``save_checkpoints``).


def _triton_scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                     *config):
    from .triton_scan import ScanConfig, _scan_bwd

    grads = _scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                      ScanConfig(*config))
    return [g if g is not None else _empty(u) for g in grads]


def _triton_scan_bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt,
                          delta_softplus, *config):
    def f32(shape, present=True):
        return u.new_empty(shape if present else (0,), dtype=torch.float32)

    batch, d_inner, _ = u.shape
    return [f32(u.shape), f32(u.shape), f32(u.shape, z is not None), f32(A.shape),
            f32(B.shape), f32(C.shape), f32((d_inner,), D is not None),
            f32((d_inner,), delta_bias is not None), f32((batch, d_inner, A.shape[1]))]


triton_scan_bwd = _register(
    "triton_scan_bwd(Tensor dy, Tensor d_final, Tensor u, Tensor delta, Tensor A, Tensor B, "
    "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor ckpt, bool delta_softplus, "
    "int block_n, int chunk, int block_e_fwd, int block_e_bwd, int num_warps_fwd, "
    "int num_warps_bwd) -> Tensor[]", _triton_scan_bwd, _triton_scan_bwd_fake, ALL_BACKENDS)
# triton_scan_bwd: The Triton backward -> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias,
# dh0], fp32; those of absent inputs (z, D, delta_bias) empty.


def _triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    from .triton_state_update import _launch_state_update

    return _launch_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _triton_state_update_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape[0], x.shape[1])


triton_state_update = _register(
    "triton_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, "
    "Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor",
    _triton_state_update, _triton_state_update_fake, ALL_BACKENDS)
# triton_state_update: One recurrent step: ``state`` (B, E, N) updated in place -> y (B,
# E) in x's dtype.
