"""Fused selective scan (Mamba-1) in Triton: forward and backward kernels, autograd.

Dimension names: B batch, E d_inner (channels), N d_state, G groups of B/C, L length,
T chunk (time steps a program handles at once).

How it works. One program owns one batch element and a block of BLOCK_E channels that
all read the same group of B/C, and keeps their (BLOCK_E, N) state in registers. It walks
the sequence in chunks of T steps: a chunk's inputs are loaded as tiles, the recurrence
h_t = a_t h_{t-1} + b_t (a_t = exp(delta_t A), b_t = delta_t u_t B_t) is solved inside the
chunk by a parallel associative scan over affine maps, and the state at the chunk's end
is carried to the next chunk. The forward saves the state entering every chunk,
(B, E, ceil(L / T), N) in fp32; the backward walks the chunks in reverse, recomputes the
chunk's states from that checkpoint, and solves the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} with a second (reversed) scan. Nothing of size
(B, E, N, L) is ever written. dB/dC, which sum over the channels of a group, are reduced
inside the program and added to an fp32 buffer with atomics.

On CPU tensors the kernels run under the Triton interpreter, which triton reads from
TRITON_INTERPRET=1 when this module is imported (``@triton.jit`` decides then).
The executable specification is ``core.scan_reference.selective_scan_ref``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dataclasses

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .ops import ALL_BACKENDS, dense_like, empty, register_op
from .scan_args import check_scan_args

CHUNK_SIZE = 64      # T at most: steps per chunk, and the spacing of the saved states
MIN_CHUNK = 8        # T at least (a shorter chunk leaves the scan little to do in parallel)
MAX_BLOCK_E = 4      # channels per program
MIN_BLOCK_N = 4      # d_state is padded to a power of two, at least this
MAX_D_STATE = 256    # above this one channel's (N, MIN_CHUNK) tile exceeds the backward's budget
# Elements of a program's (BLOCK_E, BLOCK_N, CHUNK) fp32 tile. The forward keeps about six
# such tiles live, the backward about a dozen plus a pointer per element for strided inputs:
# 32 elements per thread (4 warps) in the forward and 8 (8 warps) in the backward fit in
# 255 registers without spilling on sm_80 and sm_90 (python -m mambaseq.bench.triton_aot);
# the backward with 16 per thread spilled 4-750 bytes.
TILE_ELEMENTS_FWD = 4096
TILE_ELEMENTS_BWD = 2048
NUM_WARPS_FWD = 4
NUM_WARPS_BWD = 8
# Registers per thread, pinned at the hardware's limit for every Triton kernel of the
# toolkit: left to its own heuristic ptxas aimed lower and spilled (the backward: 128
# registers and 4 bytes, bf16, d_state 128, sm_90; the step kernel: 64 registers and 32
# bytes, fp16, d_state 128, sm_80); pinned, it took 199 and 90 and did not spill.
MAX_REGISTERS = 255


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    """Compose affine maps h -> a h + b: first (a_left, b_left), then (a_right, b_right)."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _softplus(x):
    # log(1 + exp(x)); above 20 it equals x in fp32 (same threshold as torch).
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _scan_fwd_kernel(
    # pointers
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, h0_ptr,
    y_ptr, hT_ptr, ckpt_ptr,
    # sizes
    length, d_state, channels_per_group, n_chunks,
    # strides
    stride_u_batch, stride_u_e, stride_u_l,
    stride_delta_batch, stride_delta_e, stride_delta_l,
    stride_A_e, stride_A_n,
    stride_B_batch, stride_B_group, stride_B_n, stride_B_l,
    stride_C_batch, stride_C_group, stride_C_n, stride_C_l,
    stride_z_batch, stride_z_e, stride_z_l,
    stride_h0_batch, stride_h0_e, stride_h0_n,
    stride_y_batch, stride_y_e, stride_y_l,
    stride_hT_batch, stride_hT_e, stride_hT_n,
    stride_ckpt_batch, stride_ckpt_e, stride_ckpt_chunk, stride_ckpt_n,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, SAVE_CKPT: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Program (batch b, channel block): y (BLOCK_E, L), final state and checkpoints."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)          # (BLOCK_E,) all < E
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_n = offs_n < d_state
    group = (pid_e * BLOCK_E) // channels_per_group            # the block lies in one group
    en_mask = mask_n[None, :]

    A = tl.load(A_ptr + offs_e[:, None] * stride_A_e + offs_n[None, :] * stride_A_n,
                mask=en_mask, other=0.0).to(tl.float32)       # (BLOCK_E, BLOCK_N)
    if HAS_D:
        D = tl.load(D_ptr + offs_e).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + offs_e).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * stride_h0_batch + offs_e[:, None] * stride_h0_e
                    + offs_n[None, :] * stride_h0_n, mask=en_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)

    u_base = u_ptr + pid_b * stride_u_batch + offs_e[:, None] * stride_u_e
    delta_base = delta_ptr + pid_b * stride_delta_batch + offs_e[:, None] * stride_delta_e
    y_base = y_ptr + pid_b * stride_y_batch + offs_e[:, None] * stride_y_e
    B_base = B_ptr + pid_b * stride_B_batch + group * stride_B_group + offs_n[:, None] * stride_B_n
    C_base = C_ptr + pid_b * stride_C_batch + group * stride_C_group + offs_n[:, None] * stride_C_n
    ckpt_base = (ckpt_ptr + pid_b * stride_ckpt_batch + offs_e[:, None] * stride_ckpt_e
                 + offs_n[None, :] * stride_ckpt_n)

    for c in range(n_chunks):
        if SAVE_CKPT:
            tl.store(ckpt_base + c * stride_ckpt_chunk, h, mask=en_mask)
        t = c * CHUNK + offs_t
        mask_t = t < length
        et_mask = mask_t[None, :]
        nt_mask = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_base + t[None, :] * stride_u_l, mask=et_mask, other=0.0).to(tl.float32)
        dt = tl.load(delta_base + t[None, :] * stride_delta_l, mask=et_mask,
                     other=0.0).to(tl.float32)                 # (BLOCK_E, CHUNK)
        if HAS_DELTA_BIAS:
            dt += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(et_mask, dt, 0.0)                         # steps past L: a = 1, b = 0
        Bt = tl.load(B_base + t[None, :] * stride_B_l, mask=nt_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[None, :] * stride_C_l, mask=nt_mask, other=0.0).to(tl.float32)

        decay = tl.exp(dt[:, None, :] * A[:, :, None])          # (BLOCK_E, BLOCK_N, CHUNK)
        inp = (dt * u)[:, None, :] * Bt[None, :, :]             # (BLOCK_E, BLOCK_N, CHUNK)
        decay_cum, h_local = tl.associative_scan((decay, inp), 2, _combine)
        hs = decay_cum * h[:, :, None] + h_local                # h_t for t in the chunk
        out = tl.sum(hs * Ct[None, :, :], axis=1)               # (BLOCK_E, CHUNK)
        if HAS_D:
            out += D[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * stride_z_batch + offs_e[:, None] * stride_z_e
                         + t[None, :] * stride_z_l, mask=et_mask, other=0.0).to(tl.float32)
            out *= zt * tl.sigmoid(zt)
        tl.store(y_base + t[None, :] * stride_y_l, out, mask=et_mask)
        h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)

    tl.store(hT_ptr + pid_b * stride_hT_batch + offs_e[:, None] * stride_hT_e
             + offs_n[None, :] * stride_hT_n, h, mask=en_mask)


@triton.jit
def _scan_bwd_kernel(
    # pointers
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, ckpt_ptr,
    dy_ptr, dhT_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddelta_bias_ptr, dh0_ptr,
    # sizes
    length, d_state, channels_per_group, n_chunks,
    # strides
    stride_u_batch, stride_u_e, stride_u_l,
    stride_delta_batch, stride_delta_e, stride_delta_l,
    stride_A_e, stride_A_n,
    stride_B_batch, stride_B_group, stride_B_n, stride_B_l,
    stride_C_batch, stride_C_group, stride_C_n, stride_C_l,
    stride_z_batch, stride_z_e, stride_z_l,
    stride_ckpt_batch, stride_ckpt_e, stride_ckpt_chunk, stride_ckpt_n,
    stride_dy_batch, stride_dy_e, stride_dy_l,
    stride_dhT_batch, stride_dhT_e, stride_dhT_n,
    stride_dx_batch, stride_dx_e, stride_dx_l,              # du, ddelta, dz (same layout)
    stride_dbc_batch, stride_dbc_group, stride_dbc_n, stride_dbc_l,   # dB, dC fp32
    stride_dp_batch, stride_dp_e, stride_dp_n,              # dA, dh0 (B, E, N) fp32
    stride_dv_batch, stride_dv_e,                           # dD, ddelta_bias (B, E) fp32, contiguous
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Program (batch b, channel block): all gradients, chunks walked last to first.

    Per-(b, e) partial sums of dA, dD and ddelta_bias are written for the launcher to
    sum over the batch; dB and dC are summed over the block and added atomically.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_n = offs_n < d_state
    group = (pid_e * BLOCK_E) // channels_per_group
    en_mask = mask_n[None, :]

    A = tl.load(A_ptr + offs_e[:, None] * stride_A_e + offs_n[None, :] * stride_A_n,
                mask=en_mask, other=0.0).to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_e).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + offs_e).to(tl.float32)

    u_base = u_ptr + pid_b * stride_u_batch + offs_e[:, None] * stride_u_e
    delta_base = delta_ptr + pid_b * stride_delta_batch + offs_e[:, None] * stride_delta_e
    dy_base = dy_ptr + pid_b * stride_dy_batch + offs_e[:, None] * stride_dy_e
    dx_offset = pid_b * stride_dx_batch + offs_e[:, None] * stride_dx_e
    B_base = B_ptr + pid_b * stride_B_batch + group * stride_B_group + offs_n[:, None] * stride_B_n
    C_base = C_ptr + pid_b * stride_C_batch + group * stride_C_group + offs_n[:, None] * stride_C_n
    dbc_offset = pid_b * stride_dbc_batch + group * stride_dbc_group + offs_n[:, None] * stride_dbc_n
    ckpt_base = (ckpt_ptr + pid_b * stride_ckpt_batch + offs_e[:, None] * stride_ckpt_e
                 + offs_n[None, :] * stride_ckpt_n)
    dp_offset = pid_b * stride_dp_batch + offs_e[:, None] * stride_dp_e + offs_n[None, :] * stride_dp_n
    dv_offset = pid_b * stride_dv_batch + offs_e * stride_dv_e

    # g_next: dL/dh at the first step after the current chunk (for the last chunk, the
    # gradient of the final state, which reaches h_{L-1} without a decay).
    g_next = tl.load(dhT_ptr + pid_b * stride_dhT_batch + offs_e[:, None] * stride_dhT_e
                     + offs_n[None, :] * stride_dhT_n, mask=en_mask, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_E,), dtype=tl.float32)

    for c_rev in range(n_chunks):
        c = n_chunks - 1 - c_rev
        t = c * CHUNK + offs_t
        mask_t = t < length
        et_mask = mask_t[None, :]
        nt_mask = mask_n[:, None] & mask_t[None, :]
        # Recompute the chunk's states from its checkpoint, as in the forward.
        h0 = tl.load(ckpt_base + c * stride_ckpt_chunk, mask=en_mask, other=0.0)
        u = tl.load(u_base + t[None, :] * stride_u_l, mask=et_mask, other=0.0).to(tl.float32)
        raw = tl.load(delta_base + t[None, :] * stride_delta_l, mask=et_mask,
                      other=0.0).to(tl.float32)
        # delta one step later, for the decay a_{t+1} of the adjoint recurrence.
        mask_t1 = (t + 1) < length
        raw1 = tl.load(delta_base + (t[None, :] + 1) * stride_delta_l, mask=mask_t1[None, :],
                       other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            raw += delta_bias[:, None]
            raw1 += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = _softplus(raw)
            dt1 = _softplus(raw1)
        else:
            dt = raw
            dt1 = raw1
        dt = tl.where(et_mask, dt, 0.0)
        dt1 = tl.where(mask_t1[None, :], dt1, 0.0)              # a_L = 1: dhT enters undecayed
        Bt = tl.load(B_base + t[None, :] * stride_B_l, mask=nt_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[None, :] * stride_C_l, mask=nt_mask, other=0.0).to(tl.float32)
        decay = tl.exp(dt[:, None, :] * A[:, :, None])          # (BLOCK_E, BLOCK_N, CHUNK)
        inp = (dt * u)[:, None, :] * Bt[None, :, :]
        decay_cum, h_local = tl.associative_scan((decay, inp), 2, _combine)
        hs = decay_cum * h0[:, :, None] + h_local               # h_t

        # Output side: y = (C.h + D u) * silu(z).
        gy = tl.load(dy_base + t[None, :] * stride_dy_l, mask=et_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * stride_z_batch + offs_e[:, None] * stride_z_e
                         + t[None, :] * stride_z_l, mask=et_mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zt)
            pre = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                pre += D[:, None] * u
            dz = gy * pre * sig * (1.0 + zt * (1.0 - sig))
            tl.store(dz_ptr + dx_offset + t[None, :] * stride_dx_l, dz, mask=et_mask)
            gy = gy * zt * sig

        # Adjoint: g_t = C_t gy_t + a_{t+1} g_{t+1}, a right-to-left scan. It runs as a
        # left-to-right scan on time-reversed tiles: associative_scan(reverse=True) has
        # returned wrong results for non-commutative combines (triton-lang/triton#4362).
        alpha = tl.exp(dt1[:, None, :] * A[:, :, None])
        x = gy[:, None, :] * Ct[None, :, :]
        reverse = tl.broadcast_to((CHUNK - 1 - offs_t)[None, None, :], (BLOCK_E, BLOCK_N, CHUNK))
        alpha_cum, g_local = tl.associative_scan(
            (tl.gather(alpha, reverse, 2), tl.gather(x, reverse, 2)), 2, _combine)
        g = tl.gather(alpha_cum * g_next[:, :, None] + g_local, reverse, 2)   # dL/dh_t

        decayed_prev = hs - inp                                 # a_t h_{t-1}
        dtu = dt * u
        tl.atomic_add(dC_ptr + dbc_offset + t[None, :] * stride_dbc_l,
                      tl.sum(gy[:, None, :] * hs, axis=0), mask=nt_mask)
        tl.atomic_add(dB_ptr + dbc_offset + t[None, :] * stride_dbc_l,
                      tl.sum(g * dtu[:, None, :], axis=0), mask=nt_mask)
        gB = tl.sum(g * Bt[None, :, :], axis=1)                 # (BLOCK_E, CHUNK)
        du = gB * dt
        if HAS_D:
            du += gy * D[:, None]
            dD_acc += tl.sum(gy * u, axis=1)
        gdp = g * decayed_prev
        ddt = tl.sum(gdp * A[:, :, None], axis=1) + gB * u
        dA_acc += tl.sum(gdp * dt[:, None, :], axis=2)
        if DELTA_SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(et_mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + dx_offset + t[None, :] * stride_dx_l, du, mask=et_mask)
        tl.store(ddelta_ptr + dx_offset + t[None, :] * stride_dx_l, ddt, mask=et_mask)
        g_next = tl.sum(tl.where(offs_t[None, None, :] == 0, g, 0.0), axis=2)

    # dL/dh_{-1} = a_0 g_0 (with L = 0, a_0 = 1 and the final-state gradient passes through).
    has_steps = length > 0
    raw0 = tl.load(delta_base, mask=has_steps, other=0.0).to(tl.float32)   # (BLOCK_E, 1)
    if HAS_DELTA_BIAS:
        raw0 += delta_bias[:, None]
    if DELTA_SOFTPLUS:
        raw0 = _softplus(raw0)
    dt0 = tl.where(has_steps, raw0, 0.0)
    tl.store(dh0_ptr + dp_offset, tl.exp(dt0 * A) * g_next, mask=en_mask)
    tl.store(dA_ptr + dp_offset, dA_acc, mask=en_mask)
    if HAS_D:
        tl.store(dD_ptr + dv_offset, dD_acc)
    if HAS_DELTA_BIAS:
        tl.store(ddelta_bias_ptr + dv_offset, dbias_acc)


def check_triton_device(tensor, name):
    """Raise a clear error when the Triton kernels cannot run on ``tensor``'s device.

    CUDA tensors run compiled kernels; CPU tensors run only under the Triton interpreter,
    which must be switched on (TRITON_INTERPRET=1) before this module is imported.
    """
    if tensor.device.type == "cuda":
        return
    if tensor.device.type == "cpu":
        if isinstance(_scan_fwd_kernel, InterpretedFunction):
            return
        raise RuntimeError(
            f"{name}: the Triton kernels got CPU tensors, but the Triton interpreter is off. "
            "Set TRITON_INTERPRET=1 in the environment before kernels.triton_scan is imported "
            "(triton reads it when the kernels are defined), or use core.selective_scan, "
            "which runs the C++ CPU kernel on CPU tensors.")
    raise RuntimeError(f"{name}: the Triton kernels run on CUDA tensors (or on CPU tensors "
                       f"under TRITON_INTERPRET=1), got a tensor on {tensor.device}")


@dataclass(frozen=True)
class Launch:
    """One kernel launch, planned but not run: ``kernel[grid](*args, **kwargs)``.

    The launchers run it; ``bench.triton_aot`` compiles the same plan ahead of time.
    """
    kernel: Any
    grid: tuple
    args: tuple
    kwargs: dict

    def run(self):
        self.kernel[self.grid](*self.args, **self.kwargs)


@dataclass(frozen=True)
class ScanConfig:
    """Meta-parameters of the scan kernels for one (d_state, channels per group)."""
    block_n: int         # BLOCK_N: d_state padded to a power of two
    chunk: int           # CHUNK (T): steps per chunk; also the checkpoint spacing
    block_e_fwd: int     # BLOCK_E of the forward: channels per program, all in one B/C group
    block_e_bwd: int     # BLOCK_E of the backward
    num_warps_fwd: int
    num_warps_bwd: int


def state_block_n(d_state):
    """BLOCK_N for ``d_state``: the next power of two, at least MIN_BLOCK_N.

    Raises ValueError above MAX_D_STATE, where no configuration stays within the
    register budget.
    """
    if d_state > MAX_D_STATE:
        raise ValueError(f"the Triton kernels take d_state <= {MAX_D_STATE}, got {d_state} "
                         "(larger states do not fit a program's registers)")
    return max(MIN_BLOCK_N, triton.next_power_of_2(d_state))


def _block_e(channels_per_group, block_n, chunk, budget):
    """Largest power of two <= MAX_BLOCK_E dividing E/G (a block reads one B/C group) whose
    (BLOCK_E, BLOCK_N, CHUNK) tile is within ``budget`` elements (1 at least)."""
    block_e = MAX_BLOCK_E
    while channels_per_group % block_e or (block_e > 1 and block_e * block_n * chunk > budget):
        block_e //= 2
    return block_e


def scan_config(d_state, channels_per_group):
    """The configuration the scan launchers choose for ``d_state`` and E/G.

    CHUNK: CHUNK_SIZE, or less where one channel's tile would exceed TILE_ELEMENTS_BWD (but
    at least MIN_CHUNK); it is shared by both directions, being the checkpoint spacing.
    BLOCK_E: per direction, within TILE_ELEMENTS_FWD / TILE_ELEMENTS_BWD.

    >>> scan_config(16, 1536)
    ScanConfig(block_n=16, chunk=64, block_e_fwd=4, block_e_bwd=2, num_warps_fwd=4, num_warps_bwd=8)
    """
    block_n = state_block_n(d_state)
    chunk = min(CHUNK_SIZE, max(MIN_CHUNK, TILE_ELEMENTS_BWD // block_n))
    return ScanConfig(block_n, chunk,
                      _block_e(channels_per_group, block_n, chunk, TILE_ELEMENTS_FWD),
                      _block_e(channels_per_group, block_n, chunk, TILE_ELEMENTS_BWD),
                      NUM_WARPS_FWD, NUM_WARPS_BWD)


def scan_configs():
    """Every configuration the launchers can choose (CHUNK_SIZE as set), with an example.

    Returns:
        list of (d_state, channels_per_group, ScanConfig), one per distinct configuration,
        the example being shapes for which :func:`scan_config` picks it.
    """
    found = {}
    block_n = MIN_BLOCK_N
    while block_n <= MAX_D_STATE:
        for channels_per_group in (64, 66, 65):    # divisible by 4, by 2 only, odd
            config = scan_config(block_n, channels_per_group)
            found.setdefault(config, (block_n, channels_per_group, config))
        block_n *= 2
    return list(found.values())


def _grouped(bc):
    """(B, N, L) -> (B, 1, N, L) view; (B, G, N, L) unchanged."""
    return bc.unsqueeze(1) if bc.dim() == 3 else bc


def scan_fwd_launch(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                    save_checkpoints, config):
    """Allocate the forward's outputs and plan its launch.

    Args:
        u, delta, z: (B, E, L). A: (E, N). B, C: (B, G, N, L). D, delta_bias: (E,).
        initial_state: (B, E, N) or None. config: a :class:`ScanConfig`.

    Returns:
        (y, final_state, ckpt), Launch. y (B, E, L) in u's dtype, final state (B, E, N)
        fp32, and the states entering each chunk (B, E, ceil(L / T), N) fp32 (an empty
        tensor unless ``save_checkpoints``); all written when the launch runs.
    """
    batch, d_inner, length = u.shape
    d_state, groups = A.shape[1], B.shape[1]
    n_chunks = triton.cdiv(length, config.chunk)
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    final_state = u.new_empty(batch, d_inner, d_state, dtype=torch.float32)
    ckpt = u.new_empty(batch, d_inner, n_chunks if save_checkpoints else 0, d_state,
                       dtype=torch.float32)
    z_strides = z.stride() if z is not None else (0, 0, 0)
    h0_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    args = (
        u, delta, A, B, C, D, z, delta_bias, initial_state,
        y, final_state, ckpt,
        length, d_state, d_inner // groups, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *z_strides, *h0_strides, *y.stride(), *final_state.stride(), *ckpt.stride())
    kwargs = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        HAS_H0=initial_state is not None, DELTA_SOFTPLUS=delta_softplus,
        SAVE_CKPT=save_checkpoints,
        BLOCK_E=config.block_e_fwd, BLOCK_N=config.block_n, CHUNK=config.chunk,
        num_warps=config.num_warps_fwd, maxnreg=MAX_REGISTERS)
    launch = Launch(_scan_fwd_kernel, (batch, d_inner // config.block_e_fwd), args, kwargs)
    return (y, final_state, ckpt), launch


def scan_bwd_launch(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                    config):
    """Allocate the backward's outputs and plan its launch.

    Args:
        dy: (B, E, L) gradient of y. d_final: (B, E, N) gradient of the final state.
        u, delta, A, B, C, D, z, delta_bias: as for :func:`scan_fwd_launch` (B, C grouped).
        ckpt: (B, E, ceil(L / T), N) states saved by the forward with the same ``config``.

    Returns:
        (du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0), Launch. du, ddelta,
        dz (B, E, L) (dz None without z); dA_part, dh0 (B, E, N); dB, dC (B, G, N, L)
        zeroed (the kernel adds into them); dD_part, dbias_part (B, E) or None; all fp32,
        the ``_part`` ones still to be summed over the batch.
    """
    batch, d_inner, length = u.shape
    d_state, groups = A.shape[1], B.shape[1]
    f32 = dict(dtype=torch.float32, device=u.device)
    du = torch.empty(batch, d_inner, length, **f32)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else None
    dB = torch.zeros(batch, groups, d_state, length, **f32)
    dC = torch.zeros_like(dB)
    dA_part = torch.empty(batch, d_inner, d_state, **f32)
    dh0 = torch.empty_like(dA_part)
    dD_part = torch.empty(batch, d_inner, **f32) if D is not None else None
    dbias_part = torch.empty(batch, d_inner, **f32) if delta_bias is not None else None
    z_strides = z.stride() if z is not None else (0, 0, 0)
    args = (
        u, delta, A, B, C, D, z, delta_bias, ckpt,
        dy, d_final,
        du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0,
        length, d_state, d_inner // groups, ckpt.shape[2],
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_strides,
        *ckpt.stride(), *dy.stride(), *d_final.stride(), *du.stride(), *dB.stride(),
        *dA_part.stride(), d_inner, 1)
    kwargs = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus,
        BLOCK_E=config.block_e_bwd, BLOCK_N=config.block_n, CHUNK=config.chunk,
        num_warps=config.num_warps_bwd, maxnreg=MAX_REGISTERS)
    launch = Launch(_scan_bwd_kernel, (batch, d_inner // config.block_e_bwd), args, kwargs)
    return (du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0), launch


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
              save_checkpoints, config):
    """Run the forward kernel; returns y, final state, checkpoints (see scan_fwd_launch)."""
    outputs, launch = scan_fwd_launch(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                      delta_softplus, save_checkpoints, config)
    launch.run()
    return outputs


def _scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus, config):
    """Run the backward kernel.

    Returns:
        du, ddelta, dz (B, E, L) fp32 (dz None without z); dA (E, N), dB, dC (B, G, N, L),
        dD, ddelta_bias (E,) (None when absent), d_initial_state (B, E, N); all fp32.
    """
    grads, launch = scan_bwd_launch(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt,
                                    delta_softplus, config)
    launch.run()
    du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0 = grads
    dD = dD_part.sum(0) if D is not None else None
    dbias = dbias_part.sum(0) if delta_bias is not None else None
    return du, ddelta, dz, dA_part.sum(0), dB, dC, dD, dbias, dh0


# -- the kernels as custom ops (see kernels.ops) -------------------------------------------
def _triton_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                     save_checkpoints, *config):
    return _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                     save_checkpoints, ScanConfig(*config))


def _triton_scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                          save_checkpoints, block_n, chunk, *rest_of_config):
    batch, d_inner, length = u.shape
    n = triton.cdiv(length, chunk) if save_checkpoints else 0
    return (dense_like(u), u.new_empty(batch, d_inner, A.shape[1], dtype=torch.float32),
            u.new_empty(batch, d_inner, n, A.shape[1], dtype=torch.float32))


triton_scan_fwd = register_op(
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
    grads = _scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                      ScanConfig(*config))
    return [g if g is not None else empty(u) for g in grads]


def _triton_scan_bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, ckpt,
                          delta_softplus, *config):
    def f32(shape, present=True):
        return u.new_empty(shape if present else (0,), dtype=torch.float32)

    batch, d_inner, _ = u.shape
    return [f32(u.shape), f32(u.shape), f32(u.shape, z is not None), f32(A.shape),
            f32(B.shape), f32(C.shape), f32((d_inner,), D is not None),
            f32((d_inner,), delta_bias is not None), f32((batch, d_inner, A.shape[1]))]


triton_scan_bwd = register_op(
    "triton_scan_bwd(Tensor dy, Tensor d_final, Tensor u, Tensor delta, Tensor A, Tensor B, "
    "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor ckpt, bool delta_softplus, "
    "int block_n, int chunk, int block_e_fwd, int block_e_bwd, int num_warps_fwd, "
    "int num_warps_bwd) -> Tensor[]", _triton_scan_bwd, _triton_scan_bwd_fake, ALL_BACKENDS)
# triton_scan_bwd: The Triton backward -> [du, ddelta, dz, dA, dB, dC, dD, ddelta_bias,
# dh0], fp32; those of absent inputs (z, D, delta_bias) empty.


class SelectiveScanFn(torch.autograd.Function):
    """Autograd over the Triton kernels; outputs (y, final_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, config):
        B_g, C_g = _grouped(B), _grouped(C)
        needs_grad = any(ctx.needs_input_grad)
        # An unused output's gradient comes as None (materialised zeros may lack storage,
        # which the interpreter cannot copy).
        ctx.set_materialize_grads(False)
        y, final_state, ckpt = triton_scan_fwd(u, delta, A, B_g, C_g, D, z, delta_bias,
                                                   initial_state, delta_softplus, needs_grad,
                                                   *dataclasses.astuple(config))
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B_g, C_g, D, z, delta_bias, ckpt)
            ctx.delta_softplus, ctx.config = delta_softplus, config
            ctx.bc_shapes = (B.shape, C.shape)
            ctx.initial_state_dtype = initial_state.dtype if initial_state is not None else None
        return y, final_state

    @staticmethod
    def backward(ctx, dy, d_final):
        u, delta, A, B_g, C_g, D, z, delta_bias, ckpt = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        if d_final is None:
            d_final = u.new_zeros(ckpt.shape[0], ckpt.shape[1], ckpt.shape[3], dtype=torch.float32)
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = triton_scan_bwd(
            dy, d_final, u, delta, A, B_g, C_g, D, z, delta_bias, ckpt,
            ctx.delta_softplus, *dataclasses.astuple(ctx.config))
        B_shape, C_shape = ctx.bc_shapes

        def cast(grad, like):   # the op returns empty gradients for absent inputs
            return grad.to(like.dtype) if like is not None else None

        dh0 = dh0.to(ctx.initial_state_dtype) if ctx.initial_state_dtype is not None else None
        return (cast(du, u), cast(ddelta, delta), cast(dA, A),
                dB.reshape(B_shape).to(B_g.dtype), dC.reshape(C_shape).to(C_g.dtype),
                cast(dD, D), cast(dz, z), cast(dbias, delta_bias), dh0, None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Mamba-1 selective scan with the fused Triton kernels; contract of ``core.selective_scan``.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,   y_t *= silu(z_t)

    Args:
        u, delta: (B, E, L), fp32, fp16 or bf16. z: (B, E, L) gate, optional.
        A: (E, N). B, C: (B, N, L) or grouped (B, G, N, L), G dividing E.
        D, delta_bias: (E,), optional. delta_softplus (bool, False): softplus(delta + delta_bias).
        initial_state: (B, E, N), optional (zeros).
        return_final_state (bool, False): also return the (B, E, N) state after the last step.

    Returns:
        y (B, E, L) in u's dtype (accumulated in fp32), or (y, final_state) with the final
        state in fp32. Gradients reach every tensor argument, initial_state included.
        Memory: besides inputs and outputs, one fp32 (B, E, N) state per CHUNK steps
        (scan_config: 64 up to d_state 32, 8 at d_state 256) when gradients are needed.

    On a CUDA GPU (the doctests skip these lines: CPU tensors run only under
    TRITON_INTERPRET=1, set before this module is imported):

    >>> u, delta, z = torch.randn(3, 2, 64, 100, device="cuda")  # (B, E, L)  # doctest: +SKIP
    >>> B, C = torch.randn(2, 2, 16, 100, device="cuda")         # (B, N, L)  # doctest: +SKIP
    >>> A, D = -torch.rand(64, 16, device="cuda"), torch.randn(64, device="cuda")  # doctest: +SKIP
    >>> y, h = selective_scan(u, delta, A, B, C, D, z, delta_softplus=True,  # doctest: +SKIP
    ...                       return_final_state=True)
    >>> y.shape, h.shape                                         # doctest: +SKIP
    (torch.Size([2, 64, 100]), torch.Size([2, 64, 16]))
    >>> y1, h1 = selective_scan(u[..., :60], delta[..., :60], A, B[..., :60], C[..., :60], D,
    ...                         z[..., :60], delta_softplus=True,  # doctest: +SKIP
    ...                         return_final_state=True)
    >>> y2 = selective_scan(u[..., 60:], delta[..., 60:], A, B[..., 60:], C[..., 60:], D,
    ...                     z[..., 60:], delta_softplus=True, initial_state=h1)  # doctest: +SKIP
    >>> torch.allclose(torch.cat([y1, y2], -1), y, atol=1e-4)    # continues  # doctest: +SKIP
    True
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_triton_device(u, "selective_scan")
    if u.dtype == torch.float64:
        raise ValueError("selective_scan (triton): fp64 inputs are not supported; the kernels "
                         "accumulate in fp32 (use core.scan_reference.selective_scan_ref)")
    config = scan_config(A.shape[1], u.shape[1] // _grouped(B).shape[1])
    y, final_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                           delta_softplus, config)
    return (y, final_state) if return_final_state else y
