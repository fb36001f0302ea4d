"""The Mamba block (Gu & Dao, 2023): a selective SSM with a gated MLP-like wrapper.

Dimension names: B batch, L length, D d_model, E d_inner = expand * D, N d_state,
R dt_rank, K d_conv.

    x (B, L, D) -> in_proj -> [x, z] (B, E, L) each
    x -> causal depthwise conv1d (K) -> SiLU -> x_proj -> (dt (R), B (N), C (N))
    dt -> dt_proj -> softplus(dt + bias) -> selective_scan(x, dt, A, B, C, D, z) -> out_proj
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import InferenceCache
from .causal_conv import causal_depthwise_conv
from .scan import selective_scan
from .state_update import selective_state_update

log = logging.getLogger(__name__)
_LOGGED_BACKENDS = set()               # step backends already announced in the log


@dataclass
class StepWork:
    """Scratch of the CPU step kernel for one batch of streams, reused at every step so that
    a step allocates nothing but its output: xn (B, D), xz (B, 2E), xc, dt, y (B, E),
    dbc (B, R+2N)."""
    xn: torch.Tensor
    xz: torch.Tensor
    xc: torch.Tensor
    dbc: torch.Tensor
    dt: torch.Tensor
    y: torch.Tensor

    @classmethod
    def allocate(cls, batch, d_model, d_inner, dbc_width, like):
        def new(*shape):
            return torch.empty(*shape, dtype=like.dtype, device=like.device)
        return cls(new(batch, d_model), new(batch, 2 * d_inner), new(batch, d_inner),
                   new(batch, dbc_width), new(batch, d_inner), new(batch, d_inner))


class Mamba(nn.Module):
    """Mamba block with whole-sequence ``forward``, state passing, and recurrent ``step``.

    Args:
        d_model (int): D, input and output width.
        d_state (int, 16): N, SSM state size per channel.
        d_conv (int, 4): K, causal depthwise convolution width.
        expand (int, 2): E = expand * D.
        dt_rank (int or "auto"): R, rank of the dt projection; "auto" = ceil(D / 16).
        dt_min, dt_max (float, 0.001, 0.1): softplus(dt_proj bias) is initialised
            log-uniform in [dt_min, dt_max].
        dt_init_floor (float, 1e-4): lower clamp of that initial dt.
        conv_bias (bool, True), bias (bool, False): biases of conv1d and of in/out_proj.

    The recurrent state is an ``InferenceCache`` with ``conv`` (B, E, K-1), the last K-1 conv
    inputs, oldest first, and ``ssm`` (B, E, N), the fp32 SSM state (fp64 for an fp64
    module): ``allocate_cache`` makes a zero one, ``step`` updates it in place, and
    ``forward(..., return_state=True)`` returns the one after its last step (a cache ``step``
    continues from).

    >>> blk = Mamba(32)
    >>> x = torch.randn(2, 100, 32)
    >>> y = blk(x); y.shape
    torch.Size([2, 100, 32])
    >>> cache = blk.allocate_cache(2); cache.conv.shape, cache.ssm.shape   # (B, E, K-1), (B, E, N)
    (torch.Size([2, 64, 3]), torch.Size([2, 64, 16]))
    >>> y_t = blk.step(x[:, 0], cache); torch.allclose(y_t, y[:, 0], atol=1e-5)
    True
    """

    def __init__(self, d_model, *, d_state=16, d_conv=4, expand=2, dt_rank="auto",
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

        # dt_proj: weight ~ U(+-R^-1/2); bias = softplus^-1(dt), dt log-uniform in
        # [dt_min, dt_max] (mamba_ssm's init; softplus^-1(y) = y + log(1 - exp(-y))).
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.d_inner, device=device)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # S4D-real init: A_n = -(n + 1); kept in fp32 as log(-A) whatever the module dtype.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1))     # (E, N)
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))      # (E,)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._A_cache = None            # (key, -exp(A_log)) for step; see inference_A

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero state for ``batch_size`` sequences: ``InferenceCache(conv (B, E, K-1) in the
        module's dtype (or ``dtype``), ssm (B, E, N) fp32 (fp64 for an fp64 module))``; its
        ``work`` entry holds the CPU step kernel's scratch once a step has made it."""
        conv, ssm = self._zero_state(batch_size, device, dtype)
        return InferenceCache(conv=conv, ssm=ssm, work=None)

    def _zero_state(self, batch_size, device=None, dtype=None):
        """Zero conv (B, E, K-1) and ssm (B, E, N) state tensors (see ``allocate_cache``)."""
        weight = self.conv1d.weight
        device = device or weight.device
        ssm_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device,
                            dtype=dtype or weight.dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                            dtype=ssm_dtype))

    def _ssm_params(self, x):
        """x (..., E) -> dt (..., E) before bias/softplus, B (..., N), C (..., N)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, x, state=None, return_state=False):
        """x (B, L, D) -> y (B, L, D); with ``state`` (the ``InferenceCache`` of a previous
        chunk, or a cache ``step`` left) the sequence continues from it (it is not modified).
        ``return_state=True`` also returns the state after the last step, a new cache."""
        batch, length, _ = x.shape
        # Channel-major throughout: in_proj multiplies from the left (bmm of the expanded
        # weight with x's transposed view: no copy), so x and z come out (B, E, L) with unit
        # stride along L; the conv's concatenation with the state is then a row copy (from
        # a time-major x it was a transposing copy, as slow as the scan of a layer at 4096
        # tokens). x_proj and dt_proj multiply from the left as well, the scan reads every
        # operand through its strides and lays y out like z, and out_proj multiplies y's
        # transposed view from the right (bmm again: linear would copy it for a batch > 1).
        xz = self._left_linear(self.in_proj, x.transpose(1, 2))          # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)                                         # (B, E, L) each
        conv_state, ssm_state = (self._zero_state(batch, x.device, x.dtype) if state is None
                                 else (state.conv, state.ssm))
        x_padded = torch.cat([conv_state.to(x.dtype), x], dim=-1)         # (B, E, K-1+L)
        new_conv = x_padded[..., x_padded.shape[-1] - (self.d_conv - 1):]
        conv = causal_depthwise_conv if x_padded.device.type == "cpu" else partial(
            F.conv1d, groups=self.d_inner)
        x = F.silu(conv(x_padded, self.conv1d.weight, self.conv1d.bias))  # (B, E, L)
        x_dbl = self._left_linear(self.x_proj, x)                         # (B, R+2N, L)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = torch.bmm(self.dt_proj.weight.expand(batch, -1, -1), dt)  # (B, E, L)
        A = -torch.exp(self.A_log.float())                                # (E, N)
        y, ssm = selective_scan(
            x, delta, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, initial_state=ssm_state, return_final_state=True)  # (B, E, L)
        weight = self.out_proj.weight.t().expand(batch, -1, -1)          # (B, E, D) view
        out = (torch.bmm(y.transpose(1, 2), weight) if self.out_proj.bias is None else
               torch.baddbmm(self.out_proj.bias, y.transpose(1, 2), weight))  # (B, L, D)
        if return_state:
            return out, InferenceCache(conv=new_conv, ssm=ssm, work=None)
        return out

    @staticmethod
    def _left_linear(linear, x):
        """``linear`` applied along dim 1 of x (B, in, L) -> (B, out, L): bmm of the weight,
        expanded over the batch (a view), from the left; reads x through its strides."""
        weight = linear.weight.expand(x.shape[0], -1, -1)
        if linear.bias is None:
            return torch.bmm(weight, x)
        return torch.baddbmm(linear.bias.unsqueeze(-1), weight, x)

    def inference_A(self, dtype):
        """A = -exp(A_log) (E, N) in ``dtype``, computed once per weight version: the cache is
        keyed on A_log's version counter (bumped by every in-place update: optimizer
        steps, ``load_state_dict``) and storage (``.to()``, a replaced ``.data``)."""
        p = self._parameters["A_log"]          # (not through nn.Module.__getattr__: hot path)
        key = (p._version, p.data_ptr(), p.device, dtype)
        if self._A_cache is None or self._A_cache[0] != key:
            with torch.no_grad():
                # fp32 exp then cast, as forward computes it, so fp64 step == forward exactly
                self._A_cache = (key, (-torch.exp(p.detach().float())).to(dtype).contiguous())
        return self._A_cache[1]

    def step_backend(self, x_t, cache):
        """"cpu" (the C++ kernel) for CPU fp32/fp64 without gradients, else "torch" (the
        PyTorch step, which runs the Triton state update on CUDA and keeps autograd)."""
        dtype = x_t.dtype
        if x_t.device.type != "cpu" or dtype not in (torch.float32, torch.float64):
            return "torch"
        weight = self._modules["in_proj"]._parameters["weight"]
        if torch.is_grad_enabled() and (x_t.requires_grad or weight.requires_grad):
            return "torch"
        if cache.conv.dtype != dtype or cache.ssm.dtype != dtype or weight.dtype != dtype:
            return "torch"
        return "cpu"

    def step(self, x_t, cache, pre_norm=None, add_residual=False):
        """One token: x_t (B, D) -> y_t (B, D); ``cache`` (``allocate_cache``'s) is updated in
        place.

        Args:
            pre_norm (RMSNorm, optional): normalise x_t first (a pre-norm ``Block``'s norm).
            add_residual (bool, False): return x_t + y_t (needs ``pre_norm``); the CPU
                kernel adds into x_t in place, so pass a tensor the caller owns.

        On a CPU in fp32/fp64 without gradients this is one call of the C++ step kernel
        (``kernels.cpu_step``); elsewhere, or when autograd needs the graph, ``step_torch``.
        Both compute the same function (tests compare them with ``forward``).
        """
        if add_residual and pre_norm is None:
            raise ValueError("Mamba.step: add_residual=True needs pre_norm")
        backend = self.step_backend(x_t, cache)
        if pre_norm is not None and (backend != "cpu" or pre_norm.weight.dtype != x_t.dtype):
            # not fusable (e.g. an fp32 residual stream into an fp64 block): unfused
            y = self.step(pre_norm(x_t).to(self.in_proj.weight.dtype), cache)
            return x_t + y.to(x_t.dtype) if add_residual else y
        if backend not in _LOGGED_BACKENDS:
            _LOGGED_BACKENDS.add(backend)
            log.info("Mamba.step: %s", "C++ CPU kernel" if backend == "cpu" else "PyTorch ops")
        if backend == "torch":
            return self.step_torch(x_t, cache)
        from mambaseq.kernels.cpu_step import mamba_step_cpu
        if not cache.conv.is_contiguous():          # e.g. the state a forward returned
            cache.conv = cache.conv.contiguous()
        if not cache.ssm.is_contiguous():
            cache.ssm = cache.ssm.contiguous()
        work = cache.work
        if work is None or work.xz.shape[0] != x_t.shape[0] or work.xz.dtype != x_t.dtype:
            work = cache.work = StepWork.allocate(x_t.shape[0], self.d_model, self.d_inner,
                                                  self.dt_rank + 2 * self.d_state, x_t)
        # the modules' parameter dicts read directly: nn.Module.__getattr__ costs more than
        # the rest of this function at generation sizes
        mods = self._modules
        in_proj, conv1d, x_proj, dt_proj, out_proj = (
            mods[n]._parameters for n in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"))
        return mamba_step_cpu(
            x_t.contiguous(), cache.conv, cache.ssm,
            None if pre_norm is None else pre_norm.weight,
            1e-5 if pre_norm is None else pre_norm.eps, add_residual,
            in_proj["weight"], in_proj["bias"], conv1d["weight"], conv1d["bias"],
            x_proj["weight"], dt_proj["weight"], dt_proj["bias"], self.inference_A(x_t.dtype),
            self._parameters["D"].to(x_t.dtype), out_proj["weight"], out_proj["bias"], work)

    def step_torch(self, x_t, cache):
        """``step`` in PyTorch ops (differentiable; the executable spec of the C++ kernel,
        and the path on CUDA, where the state update is the Triton kernel)."""
        x, z = self.in_proj(x_t).chunk(2, dim=-1)                         # (B, E) each
        window = torch.cat([cache.conv, x.unsqueeze(-1).to(cache.conv.dtype)], dim=-1)
        cache.conv.copy_(window[..., 1:])                                 # (B, E, K-1)
        x = (window * self.conv1d.weight[:, 0, :]).sum(-1)                # (B, E)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = self._ssm_params(x)
        A = -torch.exp(self.A_log.float()) if torch.is_grad_enabled() else \
            self.inference_A(torch.float32)
        y = selective_state_update(cache.ssm, x, dt, A, B, C, D=self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True)
        return self.out_proj(y)
