"""Fast CPU selective scan: a C++ kernel (kernels/csrc/selective_scan_cpu.cpp), compiled
once on first use by ``torch.utils.cpp_extension``, behind an autograd Function.

Why C++ and not a chunked PyTorch scan: on a CPU the scan is bound by the exp() of every
state update. A sequential loop that keeps each channel's N states in registers does
exactly B*E*N*L exps and nothing else, while parallel-prefix formulations in PyTorch do
several times the arithmetic and write (B, E, N, chunk) tensors to memory at every chunk.

Dimension names: B batch, E d_inner, N d_state, G groups, L length.
"""
from __future__ import annotations

import functools

import torch

from .cpu_build import load_kernel
from .ops import dense_like, empty, register_op
from .scan_args import check_scan_args


CHECKPOINT_CHUNK = 128  # steps between saved states; the backward recomputes inside a chunk
# Elements of each of the backward's dB and dC partial-sum buffers (per block of 8 channels,
# per segment of the sequence; at least one chunk): the backward walks the sequence in
# segments that fit. 2^16 keeps both in L2 (2^20 was ~4% slower at B 1, E 256, L 16384).
PARTIAL_BUDGET = 1 << 16


@functools.lru_cache(maxsize=1)
def load_cpu_extension():
    """Import the C++ scan kernel, compiling it first if this source, these flags, this
    torch and this CPU have no build yet (see ``kernels.cpu_build``)."""
    return load_kernel("selective_scan_cpu.cpp", "mambaseq_scan_cpu", "C++ CPU scan kernel",
                       user="selective_scan")


# -- the kernel as custom ops (see kernels.ops) --------------------------------------------
def _layout_of(like):
    """An empty (B, E, L) tensor laid out as the C++ kernel lays out its outputs
    (``empty_in_layout_of``): time-major when ``like``'s time stride is the larger, else
    channel-major. The fakes must give the strides the kernel gives."""
    if like.stride(2) > like.stride(1) and like.shape[1] > 1:
        return like.new_empty(like.shape[0], like.shape[2], like.shape[1]).transpose(1, 2)
    return like.new_empty(like.shape)


def _cpu_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, has_z, chunk,
                  save_checkpoints):
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
    ckpt_shape = ((batch, d_inner, (length + chunk - 1) // chunk, A.shape[1]) if save_checkpoints
                  else (0,))
    return _layout_of(z if has_z else u), dense_like(h0), u.new_empty(ckpt_shape)


cpu_scan_fwd = register_op(
    "cpu_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
    "Tensor delta_bias, Tensor h0, bool delta_softplus, bool has_z, int chunk, "
    "bool save_checkpoints) -> (Tensor, Tensor, Tensor)", _cpu_scan_fwd, _cpu_scan_fwd_fake)
# cpu_scan_fwd: the C++ forward (inputs in the compute dtype, B/C (B, G, N, L)) -> y (B, E,
# L) laid out like z (like u without a gate), final state (B, E, N), states entering each
# chunk (B, E, K, N) (empty unless ``save_checkpoints``).


def _cpu_scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0, ckpt, delta_softplus,
                  has_z, chunk, partial_budget):
    d_final, A, D, delta_bias, h0, ckpt = [t.contiguous()
                                           for t in (d_final, A, D, delta_bias, h0, ckpt)]
    return list(load_cpu_extension().scan_bwd(dy, d_final, u, delta, A, B, C, D, z,
                                              delta_bias, h0, ckpt, delta_softplus, has_z,
                                              chunk, partial_budget))


def _cpu_scan_bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, h0, ckpt,
                       delta_softplus, has_z, chunk, partial_budget):
    batch, groups, d_state, length = B.shape
    bc_grad = u.new_empty(batch, groups, length, d_state)
    return [_layout_of(u), _layout_of(delta), _layout_of(z) if has_z else empty(u),
            dense_like(A), bc_grad, bc_grad.new_empty(bc_grad.shape), dense_like(D),
            dense_like(delta_bias), dense_like(d_final)]


cpu_scan_bwd = register_op(
    "cpu_scan_bwd(Tensor dy, Tensor d_final, Tensor u, Tensor delta, Tensor A, Tensor B, "
    "Tensor C, Tensor D, Tensor z, Tensor delta_bias, Tensor h0, Tensor ckpt, "
    "bool delta_softplus, bool has_z, int chunk, int partial_budget) -> Tensor[]",
    _cpu_scan_bwd, _cpu_scan_bwd_fake)
# cpu_scan_bwd: the C++ backward -> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dh0]; du,
# ddelta, dz laid out like u, delta, z (dz empty without a gate), dB and dC time-major
# (B, G, L, N).


# -- autograd -----------------------------------------------------------------------------
def _grouped(bc):
    """(B, N, L) or (B, G, N, L) -> a (B, G, N, L) view, strides kept."""
    return bc.unsqueeze(1) if bc.dim() == 3 else bc


def _meta(t):
    """(dtype, shape) of an input, or None when it is absent: all the backward needs of it.
    Holding the tensor itself on ctx would keep it alive where autograd's saved tensors are
    released (``torch.utils.checkpoint`` drops them after the forward)."""
    return None if t is None else (t.dtype, t.shape)


def _from_time_major(grad, meta):
    """A (B, G, L, N) gradient from the kernel -> the input's shape and dtype (``meta``); a
    view when the dtype matches: no copy here; whoever consumes it copies only if it must."""
    dtype, shape = meta
    return grad.transpose(-1, -2).reshape(shape).to(dtype)


class _SelectiveScanCPU(torch.autograd.Function):
    """Inputs go to the kernel as they are (views included) when their dtype is the compute
    dtype: the kernel reads every tensor through its strides, so no layout is copied."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, d_inner, _ = u.shape
        d_state = A.shape[1]

        def prep(t):
            return t.to(compute)

        u_c, delta_c = prep(u), prep(delta)
        A_c = prep(A).contiguous()
        B_c, C_c = prep(_grouped(B)), prep(_grouped(C))
        D_c = prep(D).contiguous() if D is not None else u_c.new_zeros(d_inner)
        bias_c = (prep(delta_bias).contiguous() if delta_bias is not None
                  else u_c.new_zeros(d_inner))
        z_c = prep(z) if z is not None else u_c.new_empty(0)
        h0_c = (prep(initial_state).contiguous() if initial_state is not None
                else u_c.new_zeros(batch, d_inner, d_state))
        needs_grad = any(ctx.needs_input_grad)
        y, final_state, ckpt = cpu_scan_fwd(
            u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, h0_c,
            delta_softplus, z is not None, CHECKPOINT_CHUNK, needs_grad)
        if needs_grad:
            ctx.save_for_backward(u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, h0_c, ckpt)
            ctx.inputs = [_meta(t) for t in (u, delta, A, B, C, D, z, delta_bias,
                                              initial_state)]
            ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(ckpt)
        return y.to(u.dtype), final_state, ckpt

    @staticmethod
    def backward(ctx, grad_y, grad_final, _grad_ckpt):
        u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, h0_c, ckpt = ctx.saved_tensors
        u, delta, A, B, C, D, z, delta_bias, initial_state = ctx.inputs      # (dtype, shape)
        grad_y = grad_y.to(u_c.dtype)
        grad_final = (grad_final.to(u_c.dtype).contiguous() if grad_final is not None
                      else torch.zeros_like(h0_c))
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = cpu_scan_bwd(
            grad_y, grad_final, u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, h0_c, ckpt,
            ctx.delta_softplus, z is not None, CHECKPOINT_CHUNK, PARTIAL_BUDGET)

        def cast(grad, meta):
            return grad.to(meta[0]) if meta is not None else None

        return (cast(du, u), cast(ddelta, delta), cast(dA, A),
                _from_time_major(dB, B), _from_time_major(dC, C), cast(dD, D),
                cast(dz, z), cast(dbias, delta_bias), cast(dh0, initial_state), None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None, return_final_state=False):
    """Selective scan on CPU tensors with the C++ kernel; same contract as
    ``core.selective_scan`` (see ``core.scan_reference.selective_scan_ref`` for shapes).

    The forward never holds more than the inputs, the output and O(B*E*N) state; with
    gradients it also keeps one (B, E, N) state every CHECKPOINT_CHUNK steps. Views are
    read through their strides (no layout copies); y is laid out like z (like u without a
    gate). Outputs and gradients are bitwise the same for any number of threads.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_cpu: tensors must be on the CPU, got {u.device}")
    y, final_state, _ = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias,
                                                initial_state, delta_softplus)
    return (y, final_state) if return_final_state else y
