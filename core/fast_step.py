"""A cheap recurrent step for ``MambaLM`` generation: preallocated buffers, fused ops.

Dimension names: B batch, D d_model, E d_inner, N d_state, R dt_rank, K d_conv, V vocab.

``MambaLM.step`` is written for clarity: per token and layer it runs ~40 small PyTorch ops,
allocates every intermediate, and recomputes ``-exp(A_log)`` and the dtype casts. On a CPU
at small widths each op costs microseconds of dispatch whatever its size, so the step is
dominated by that overhead. ``FastStepper`` computes the same function with:

- constants computed once: A = -exp(A_log), D, dt bias, conv taps, the RMSNorm weight
  folded into in_proj's columns (in_proj(norm(r) * w) = (in_proj.W * w) norm(r));
- one preallocated buffer per intermediate, written with ``out=`` variants, so a token
  allocates nothing but its logits;
- the conv window as a ring buffer (B, E, K): the new input overwrites the oldest slot
  and the taps are pre-rotated per slot, instead of a cat + copy of the window;
- the SSM update as ``state = state * exp(dt A) + (dt x) B`` with ``addcmul_`` and the
  read-out ``y = state @ C`` as one ``bmm``.

It is opt-in and exact up to float rounding (tests compare it with ``MambaLM.step``); it
reads the model's weights when built, so rebuild it after the weights change. fp32 only.

>>> stepper = FastStepper(lm, batch_size=2)
>>> stepper.load_state(state)              # optional: a list of MambaState (e.g. a prompt's)
>>> logits = stepper.step(ids_t)           # (B, V), like lm.step(ids_t, cache)
>>> out = fast_generate(lm, prompt, 100)   # greedy/sampled, like lm.generate
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import clone_state
from .mamba import MambaState
from .sampling import sample_logits

__all__ = ["FastStepper", "fast_generate", "compile_step"]


class _Layer:
    """Constants and buffers of one Mamba block's step."""

    def __init__(self, blk, batch):
        m = blk.mixer
        E, N, R, K = m.d_inner, m.d_state, m.dt_rank, m.d_conv
        self.E, self.N, self.R, self.K = E, N, R, K
        self.eps = blk.norm.eps
        with torch.no_grad():
            f = dict(dtype=torch.float32, device=m.A_log.device)
            # in_proj(norm(r) * w): fold the RMSNorm weight into the columns of in_proj.
            self.w_in = (m.in_proj.weight.float() * blk.norm.weight.float()).t().contiguous()  # (D, 2E)
            self.b_in = None if m.in_proj.bias is None else m.in_proj.bias.float().clone()
            taps = m.conv1d.weight[:, 0, :].float()                                      # (E, K)
            # Ring buffer: slot s holds the newest input when the write position is s, so
            # the tap of slot j is taps[(j - s - 1) mod K]; one pre-rotated copy per s.
            self.taps = torch.stack([torch.roll(taps, shifts=s + 1, dims=1)
                                     for s in range(K)]).contiguous()                    # (K, E, K)
            self.conv_b = (torch.zeros(E, **f) if m.conv1d.bias is None
                           else m.conv1d.bias.float().clone())
            self.w_x = m.x_proj.weight.float().t().contiguous()                          # (E, R+2N)
            self.w_dt = m.dt_proj.weight.float().t().contiguous()                        # (R, E)
            self.b_dt = m.dt_proj.bias.float().clone()                                   # (E,)
            self.A = (-torch.exp(m.A_log.float())).contiguous()                          # (E, N)
            self.D = m.D.float().clone()                                                 # (E,)
            self.w_out = m.out_proj.weight.float().t().contiguous()                      # (E, D)
            self.b_out = None if m.out_proj.bias is None else m.out_proj.bias.float().clone()
        D = self.w_in.shape[0]
        z = lambda *shape: torch.zeros(*shape, **f)
        self.ring = z(batch, E, K)          # conv inputs, ring buffer
        self.ssm = z(batch, E, N)           # SSM state
        self.ms = z(batch, 1)               # RMSNorm mean square
        self.xn = z(batch, D)               # normalised input
        self.xz = z(batch, 2 * E)           # in_proj output
        self.prod = z(batch, E, K)          # conv products
        self.xc = z(batch, E)               # conv output, then SiLU
        self.dbc = z(batch, R + 2 * N)      # x_proj output: dt (R), B (N), C (N)
        self.dt = z(batch, E)
        self.dtx = z(batch, E)
        self.dA = z(batch, E, N)
        self.y = z(batch, E, 1)
        self.gate = z(batch, E)
        self.out = z(batch, D)

    def step(self, residual, pos):
        """residual (B, D) fp32 += this block's output, in place; ``pos`` = ring write slot."""
        E, N, R = self.E, self.N, self.R
        # RMSNorm (weight folded into w_in).
        torch.mul(residual, residual, out=self.xn)
        torch.mean(self.xn, -1, keepdim=True, out=self.ms)
        self.ms.add_(self.eps).rsqrt_()
        torch.mul(residual, self.ms, out=self.xn)
        if self.b_in is None:
            torch.mm(self.xn, self.w_in, out=self.xz)                                   # (B, 2E)
        else:
            torch.addmm(self.b_in, self.xn, self.w_in, out=self.xz)
        x, z = self.xz[:, :E], self.xz[:, E:]
        # Causal depthwise conv over the ring buffer, then SiLU.
        self.ring[:, :, pos].copy_(x)
        torch.mul(self.ring, self.taps[pos], out=self.prod)
        torch.sum(self.prod, -1, out=self.xc)
        self.xc.add_(self.conv_b)
        F.silu(self.xc, inplace=True)                                                   # (B, E)
        # dt, B, C.
        torch.mm(self.xc, self.w_x, out=self.dbc)
        dt_r, Bm, Cm = self.dbc[:, :R], self.dbc[:, R:R + N], self.dbc[:, R + N:]
        torch.addmm(self.b_dt, dt_r, self.w_dt, out=self.dt)
        # F.softplus has no out=; the ATen op behind it does (beta 1, threshold 20 as F.softplus).
        torch._C._nn.softplus(self.dt, 1.0, 20.0, out=self.dt)                          # (B, E)
        # state = state * exp(dt A) + (dt x) B;  y = state C + D x, gated by silu(z).
        torch.mul(self.dt.unsqueeze(-1), self.A, out=self.dA).exp_()                    # (B, E, N)
        torch.mul(self.dt, self.xc, out=self.dtx)
        self.ssm.mul_(self.dA).addcmul_(self.dtx.unsqueeze(-1), Bm.unsqueeze(1))
        torch.bmm(self.ssm, Cm.unsqueeze(-1), out=self.y)                               # (B, E, 1)
        y = self.y.squeeze(-1)
        y.addcmul_(self.xc, self.D)
        F.silu(z, inplace=True)
        y.mul_(z)
        if self.b_out is None:
            torch.mm(y, self.w_out, out=self.out)                                       # (B, D)
        else:
            torch.addmm(self.b_out, y, self.w_out, out=self.out)
        residual.add_(self.out)


class FastStepper:
    """Fused, allocation-free recurrent step of a ``MambaLM`` (fp32, any device; tuned for CPU).

    Args:
        lm (MambaLM): the model; its weights are copied (folded/transposed) at construction.
        batch_size (int): B, fixed for the life of the stepper.

    The state starts at zero (as ``lm.allocate_cache``); ``load_state`` sets it from a list
    of ``MambaState`` and ``state()`` returns it in that form.
    """

    def __init__(self, lm, batch_size):
        bb = lm.backbone
        self.batch_size = batch_size
        self.embedding = lm.embedding.weight.detach().float()                           # (V, D)
        self.layers = [_Layer(blk, batch_size) for blk in bb.layers]
        self.norm_eps = bb.norm_f.eps
        self.w_head = (self.embedding * bb.norm_f.weight.detach().float()).t().contiguous()  # (D, V)
        D = self.embedding.shape[1]
        self.residual = torch.zeros(batch_size, D, device=self.embedding.device)
        self.ms = torch.zeros(batch_size, 1, device=self.embedding.device)
        self.K = self.layers[0].K if self.layers else 1
        self.pos = 0                         # ring slot the next input is written to

    def load_state(self, state):
        """Set the recurrent state from a list of ``MambaState`` (conv (B, E, K-1), ssm)."""
        if len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layers, the model {len(self.layers)}")
        self.pos = 0
        for layer, s in zip(self.layers, state):
            layer.ssm.copy_(s.ssm)
            # Oldest first in slots 0..K-2; the next input goes to slot K-1.
            layer.ring[:, :, :layer.K - 1].copy_(s.conv)
        self.pos = self.K - 1

    def state(self):
        """The recurrent state as a list of ``MambaState`` (copies), oldest conv input first."""
        out = []
        for layer in self.layers:
            order = [(self.pos + j) % layer.K for j in range(1, layer.K)]
            out.append(MambaState(conv=layer.ring[:, :, order].clone(), ssm=layer.ssm.clone()))
        return out

    def reset(self):
        for layer in self.layers:
            layer.ring.zero_()
            layer.ssm.zero_()
        self.pos = 0

    @torch.no_grad()
    def step(self, ids_t):
        """ids_t (B,) long -> logits (B, V) fp32; the state advances one step."""
        torch.index_select(self.embedding, 0, ids_t, out=self.residual)
        for layer in self.layers:
            layer.step(self.residual, self.pos)
        self.pos = (self.pos + 1) % self.K
        r = self.residual
        torch.mean(r * r, -1, keepdim=True, out=self.ms)
        self.ms.add_(self.norm_eps).rsqrt_()
        return torch.mm(r * self.ms, self.w_head)                                       # (B, V)


@torch.no_grad()
def fast_generate(lm, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                  generator=None):
    """``lm.generate`` with the ``FastStepper`` for the new tokens (same arguments, same
    output up to float rounding of the logits)."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (batch, length >= 1), got "
                         f"{tuple(prompt_ids.shape)}")
    logits, state = lm(prompt_ids, return_state=True)
    stepper = FastStepper(lm, prompt_ids.shape[0])
    stepper.load_state(clone_state(state))
    logits_t = logits[:, -1]
    new = []
    for i in range(max_new_tokens):
        tok = sample_logits(logits_t, temperature, top_k, top_p, generator)
        new.append(tok)
        if i + 1 < max_new_tokens:
            logits_t = stepper.step(tok)
    if not new:
        return prompt_ids
    return torch.cat([prompt_ids, torch.stack(new, 1).to(prompt_ids.dtype)], 1)


def compile_step(lm, **compile_kwargs):
    """``torch.compile`` of ``lm.step`` (fixed shapes): the alternative to ``FastStepper``.

    Returns a function ``step(ids_t, cache) -> logits`` with ``lm.step``'s contract. The first
    call per batch size compiles (tens of seconds on a small CPU); measured against
    ``FastStepper`` in ``bench/generate.py``.
    """
    compile_kwargs.setdefault("dynamic", False)
    compiled = torch.compile(lm.step, **compile_kwargs)

    @torch.no_grad()
    def step(ids_t, cache):
        return compiled(ids_t, cache)
    return step
