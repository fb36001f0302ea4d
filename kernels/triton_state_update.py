"""One recurrent step of the selective SSM as a Triton kernel, for generation.

Dimension names: B batch, E d_inner, N d_state, G groups of B/C.

The step reads and writes the (B, E, N) state once and touches nothing that grows with
the number of tokens already generated, so its time is the same at token 10 and at
token 1,000,000. The executable specification is
``core.state_update.selective_state_update_ref``.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from .ops import ALL_BACKENDS, register_op
from .triton_scan import (MAX_D_STATE, MAX_REGISTERS, MIN_BLOCK_N, Launch,
                          check_triton_device, state_block_n)

MAX_BLOCK_E = 16
NUM_WARPS = 4


@triton.jit
def _state_update_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, y_ptr,
    # sizes
    d_inner, d_state, channels_per_group,
    # strides
    stride_state_batch, stride_state_e, stride_state_n,
    stride_x_batch, stride_x_e,
    stride_dt_batch, stride_dt_e,
    stride_A_e, stride_A_n,
    stride_B_batch, stride_B_group, stride_B_n,
    stride_C_batch, stride_C_group, stride_C_n,
    stride_z_batch, stride_z_e,
    stride_y_batch, stride_y_e,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program (batch b, channel block): state <- exp(dt A) state + dt x B; y = C.state (+ D x)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    mask_e = offs_e < d_inner
    mask_en = mask_e[:, None] & (offs_n[None, :] < d_state)
    group = offs_e // channels_per_group                   # channels of a block may span groups

    state_ptrs = (state_ptr + pid_b * stride_state_batch + offs_e[:, None] * stride_state_e
                  + offs_n[None, :] * stride_state_n)
    state = tl.load(state_ptrs, mask=mask_en, other=0.0).to(tl.float32)   # (BLOCK_E, BLOCK_N)
    x = tl.load(x_ptr + pid_b * stride_x_batch + offs_e * stride_x_e, mask=mask_e,
                other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * stride_dt_batch + offs_e * stride_dt_e, mask=mask_e,
                 other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    A = tl.load(A_ptr + offs_e[:, None] * stride_A_e + offs_n[None, :] * stride_A_n,
                mask=mask_en, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + pid_b * stride_B_batch + group[:, None] * stride_B_group
                 + offs_n[None, :] * stride_B_n, mask=mask_en, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * stride_C_batch + group[:, None] * stride_C_group
                 + offs_n[None, :] * stride_C_n, mask=mask_en, other=0.0).to(tl.float32)

    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * Bv
    tl.store(state_ptrs, state, mask=mask_en)
    y = tl.sum(state * Cv, axis=1)                          # (BLOCK_E,)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_z_batch + offs_e * stride_z_e, mask=mask_e,
                    other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + pid_b * stride_y_batch + offs_e * stride_y_e, y, mask=mask_e)


def _check_args(state, x, dt, A, B, C, D, z, dt_bias):
    """Raise ValueError naming the argument whose shape is wrong; returns (batch, E, N, G)."""
    if state.dim() != 3:
        raise ValueError(f"selective_state_update: state must be (batch, d_inner, d_state), "
                         f"got {tuple(state.shape)}")
    batch, d_inner, d_state = state.shape
    expected = {"x": (batch, d_inner), "dt": (batch, d_inner), "z": (batch, d_inner),
                "A": (d_inner, d_state), "D": (d_inner,), "dt_bias": (d_inner,)}
    given = {"x": x, "dt": dt, "z": z, "A": A, "D": D, "dt_bias": dt_bias}
    for name, shape in expected.items():
        if given[name] is not None and tuple(given[name].shape) != shape:
            raise ValueError(f"selective_state_update: {name} must have shape {shape}, "
                             f"got {tuple(given[name].shape)}")
    if B.shape != C.shape:
        raise ValueError(f"selective_state_update: B and C must have the same shape, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    groups = B.shape[1] if B.dim() == 3 else 1
    if B.shape != ((batch, groups, d_state) if B.dim() == 3 else (batch, d_state)):
        raise ValueError(f"selective_state_update: B, C must be (batch={batch}, "
                         f"d_state={d_state}) or (batch, groups, d_state), got {tuple(B.shape)}")
    if d_inner % groups:
        raise ValueError(f"selective_state_update: {groups} groups do not divide d_inner={d_inner}")
    if not state.is_floating_point():
        raise ValueError(f"selective_state_update: state must be floating point, got {state.dtype}")
    return batch, d_inner, d_state, groups


@dataclass(frozen=True)
class StateUpdateConfig:
    """Meta-parameters of the step kernel for one (d_inner, d_state)."""
    block_e: int         # BLOCK_E: channels per program (may span B/C groups)
    block_n: int         # BLOCK_N: d_state padded to a power of two
    num_warps: int


def state_update_config(d_inner, d_state):
    """The configuration the step launcher chooses: min(MAX_BLOCK_E, next power of two of E)
    channels per program, BLOCK_N as the scan's (``triton_scan.state_block_n``)."""
    return StateUpdateConfig(min(MAX_BLOCK_E, triton.next_power_of_2(d_inner)),
                             state_block_n(d_state), NUM_WARPS)


def state_update_configs():
    """Every configuration the step launcher can choose, with an example.

    Returns:
        list of (d_inner, d_state, StateUpdateConfig), the example being shapes for which
        :func:`state_update_config` picks it.
    """
    found = {}
    d_state = MIN_BLOCK_N
    while d_state <= MAX_D_STATE:
        d_inner = 1
        while d_inner <= MAX_BLOCK_E:
            config = state_update_config(d_inner, d_state)
            found.setdefault(config, (d_inner, d_state, config))
            d_inner *= 2
        d_state *= 2
    return list(found.values())


def state_update_launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, config):
    """Allocate y and plan the step kernel's launch.

    Args:
        state: (B, E, N). x, dt, z: (B, E). A: (E, N). B, C: (B, G, N). D, dt_bias: (E,).
        config: a :class:`StateUpdateConfig`.

    Returns:
        y (B, E) in x's dtype (written, and ``state`` updated, when the launch runs), Launch.
    """
    batch, d_inner, d_state = state.shape
    groups = B.shape[1]
    y = x.new_empty(batch, d_inner)
    z_strides = z.stride() if z is not None else (0, 0)
    args = (
        state, x, dt, A, B, C, D, z, dt_bias, y,
        d_inner, d_state, d_inner // groups,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *z_strides, *y.stride())
    kwargs = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus, BLOCK_E=config.block_e, BLOCK_N=config.block_n,
        num_warps=config.num_warps, maxnreg=MAX_REGISTERS)
    grid = (batch, triton.cdiv(d_inner, config.block_e))
    return y, Launch(_state_update_kernel, grid, args, kwargs)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False):
    """One step of the selective scan, in place on ``state``; the Triton kernel.

    Args:
        state: (B, E, N) state (fp32 advised), overwritten with the new state.
        x, dt: (B, E) input and step size. z: (B, E) gate, optional.
        A: (E, N). B, C: (B, N) or grouped (B, G, N), G dividing E.
        D, dt_bias: (E,), optional. dt_softplus (bool, False): softplus(dt + dt_bias).

    Returns:
        y: (B, E) in x's dtype, computed in fp32.

    On a CUDA GPU (the doctests skip these lines: CPU tensors run only under
    TRITON_INTERPRET=1, set before this module is imported):

    >>> import torch
    >>> x, dt, z = torch.randn(3, 2, 64, device="cuda")    # (B, E) each  # doctest: +SKIP
    >>> A, D = -torch.rand(64, 16, device="cuda"), torch.randn(64, device="cuda")  # doctest: +SKIP
    >>> B, C = torch.randn(2, 2, 16, device="cuda")        # (B, N) each  # doctest: +SKIP
    >>> state = torch.zeros(2, 64, 16, device="cuda")      # (B, E, N)  # doctest: +SKIP
    >>> y = selective_state_update(state, x, dt, A, B, C, D, z, dt_softplus=True)  # doctest: +SKIP
    >>> y.shape, bool(state.any())                # state updated in place  # doctest: +SKIP
    (torch.Size([2, 64]), True)
    """
    _check_args(state, x, dt, A, B, C, D, z, dt_bias)
    check_triton_device(state, "selective_state_update")
    return triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _launch_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Launch the kernel on checked arguments (the body of op ``triton_state_update``)."""
    _, d_inner, d_state = state.shape
    if B.dim() == 2:
        B, C = B.unsqueeze(1), C.unsqueeze(1)                # (B, 1, N)
    y, launch = state_update_launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                    state_update_config(d_inner, d_state))
    launch.run()
    return y


# -- the kernel as a custom op (see kernels.ops) -------------------------------------------
def _triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return _launch_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _triton_state_update_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape[0], x.shape[1])


triton_state_update = register_op(
    "triton_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, "
    "Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor",
    _triton_state_update, _triton_state_update_fake, ALL_BACKENDS)
# triton_state_update: One recurrent step: ``state`` (B, E, N) updated in place -> y (B,
# E) in x's dtype.
