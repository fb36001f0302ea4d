"""The registry of the kernels' torch custom ops (``torch.ops.mambaseq.*``): each backend
module defines its ops here with ``register_op``, a kernel and a fake implementation that
gives the shapes and dtypes of its outputs without running it. This module imports no
backend (the backends import it: the dependency points one way).

Why: ``torch.compile`` cannot look inside a C++ extension call or a Triton launch, so a
Mamba block that calls them directly breaks the compiled graph at every scan. As custom ops
with fake implementations they are opaque nodes that dynamo traces through with fake
tensors, and the compiled graph of a whole ``MambaLM`` has no break. The autograd wrappers
(``kernels.cpu_scan``, ``kernels.triton_scan``) call these ops for their forward and
backward, so the backward graph traces the same way.

The ops, each defined in the module of its kernel:

    cpu_scan_fwd / cpu_scan_bwd         ``kernels.cpu_scan``: the C++ kernel (arguments
                                        already contiguous, in the compute dtype, B/C
                                        time-major (B, G, L, N))
    triton_scan_fwd / triton_scan_bwd   ``kernels.triton_scan``: the Triton kernels (B/C
                                        grouped (B, G, N, L); the ScanConfig passed as its
                                        six ints)
    triton_state_update                 ``kernels.triton_state_update``: one recurrent
                                        step, in place on ``state``

Absent optional outputs (dz without a gate, dD without D, ...) come back as empty tensors:
an op returns tensors only.

Registered with ``torch.library.Library`` rather than ``torch.library.custom_op``, whose
kernels import ``torch._dynamo`` (and with it triton) on their first eager call: the CPU
path must not pay for that.

Strides: under ``torch.compile`` inductor may hand an op a tensor whose layout differs from
the eager one (padded strides, say). The C++ kernel reads its sequences through their
strides and makes the small tensors it reads by pointer contiguous; its fakes give the
layouts the kernel gives, the Triton fakes contiguous outputs as theirs.

Dimension names: B batch, E d_inner, N d_state, G groups, L length, T chunk, K chunks.
"""
from __future__ import annotations

import torch

# FRAGMENT, and ops already defined are kept: in a checkout on sys.path a backend module can
# be imported twice, as mambaseq.kernels.X and as kernels.X (transformers probes for a
# "kernels" package that way).
_LIB = torch.library.Library("mambaseq", "FRAGMENT")   # kept alive: it owns the registrations
ALL_BACKENDS = "CompositeExplicitAutograd"      # the Triton ops: CUDA, and CPU when interpreted


def register_op(schema, kernel, fake, dispatch_key="CPU"):
    """Define ``mambaseq::<schema>`` with ``kernel`` and its fake; returns the op overload."""
    name = schema.split("(")[0]
    if hasattr(torch.ops.mambaseq, name):
        return getattr(torch.ops.mambaseq, name).default
    _LIB.define(schema)
    _LIB.impl(name, kernel, dispatch_key)
    torch.library.register_fake(f"mambaseq::{name}", fake, lib=_LIB)
    return getattr(torch.ops.mambaseq, name).default


def empty(like):
    """The empty tensor that stands for an absent output."""
    return like.new_empty(0)


def dense_like(t):
    """An uninitialised contiguous tensor of ``t``'s shape and dtype (a fake's output)."""
    return t.new_empty(t.shape)
