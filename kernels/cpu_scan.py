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

from . import ops
from .cpu_build import load_kernel
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
        y, final_state, ckpt = ops.cpu_scan_fwd(
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
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = ops.cpu_scan_bwd(
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
