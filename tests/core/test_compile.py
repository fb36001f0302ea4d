"""torch.compile over the scan kernels: the C++ CPU scan and the Triton ops are custom ops
with fake implementations (registered in kernels.ops), so a MambaLM compiles as one graph (no
break) with the results and gradients of the eager model."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mambaseq.core import MambaLM, MambaLMConfig
from mambaseq.kernels.cpu_scan import CHECKPOINT_CHUNK, PARTIAL_BUDGET, cpu_scan_bwd, cpu_scan_fwd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _loss_grads(model, lm, ids):
    lm.zero_grad()
    logits = model(ids)
    F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


def _compiled_matches_eager(backend):
    lm = MambaLM(MambaLMConfig(vocab_size=11, d_model=16, n_layer=2))
    ids = torch.randint(0, 11, (2, 40))
    assert torch._dynamo.explain(lm)(ids).graph_break_count == 0
    compiled = torch.compile(lm, backend=backend, fullgraph=True)   # fullgraph: a break raises
    eager_logits, eager_grads = _loss_grads(lm, lm, ids)
    logits, grads = _loss_grads(compiled, lm, ids)
    torch.testing.assert_close(logits, eager_logits, rtol=0, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_mamba_lm_traces_as_one_graph_with_eager_results_and_gradients():
    torch._dynamo.reset()
    _compiled_matches_eager("aot_eager")   # dynamo + AOT autograd over the fake kernels


@pytest.mark.slow
def test_inductor_compiled_mamba_lm_equals_eager():
    torch._dynamo.reset()
    _compiled_matches_eager("inductor")


def _cpu_scan_args(save, has_z=True, batch=2, d_inner=4, length=9, d_state=3, groups=1):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    u = r(batch, d_inner, length)
    return (u, r(batch, d_inner, length).abs() * 0.5, -r(d_inner, d_state).abs(),
            r(batch, groups, d_state, length), r(batch, groups, d_state, length), r(d_inner),
            r(batch, d_inner, length) if has_z else u.new_empty(0), r(d_inner),
            r(batch, d_inner, d_state), True, has_z, CHECKPOINT_CHUNK, save)


@pytest.mark.parametrize("has_z", [True, False])
def test_cpu_scan_ops_pass_opcheck(has_z):
    """Schema, fake tensors and dynamic shapes of the C++ ops agree with what they do."""
    fwd_args = _cpu_scan_args(True, has_z)
    torch.library.opcheck(cpu_scan_fwd, fwd_args)
    torch.library.opcheck(cpu_scan_fwd, _cpu_scan_args(False, has_z))
    y, _, ckpt = cpu_scan_fwd(*fwd_args)
    u, delta, A, B, C, D, z, bias, h0, softplus, _, chunk, _ = fwd_args
    bwd_args = (torch.randn_like(y), torch.randn_like(h0), u, delta, A, B, C, D, z, bias, h0,
                ckpt, softplus, has_z, chunk, PARTIAL_BUDGET)
    torch.library.opcheck(cpu_scan_bwd, bwd_args)
    # inductor may pass padded strides: the op reads them right
    padded = torch.zeros(u.shape[0], u.shape[1], u.shape[2] + 5)[..., :u.shape[2]]
    padded.copy_(u)
    y_padded, _, _ = cpu_scan_fwd(padded, *fwd_args[1:])
    torch.testing.assert_close(y_padded, y, rtol=0, atol=0)
    # a time-major gate gives a time-major y, and the fake says so
    z_t = z.transpose(1, 2).contiguous().transpose(1, 2) if has_z else z
    torch.library.opcheck(cpu_scan_fwd, (u, delta, A, B, C, D, z_t) + fwd_args[7:])


TRITON_SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from mambaseq.kernels import triton_scan, triton_state_update
from mambaseq.core.scan_reference import selective_scan_ref
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g)
u, delta, z = r(1, 4, 6), r(1, 4, 6).abs() * 0.5, r(1, 4, 6)
A, B, C, D, bias, h0 = -r(4, 2).abs(), r(1, 1, 2, 6), r(1, 1, 2, 6), r(4), r(4), r(1, 4, 2)
import dataclasses
config = dataclasses.astuple(triton_scan.scan_config(2, 4))
fwd = (u, delta, A, B, C, D, z, bias, h0, True, True, *config)
torch.library.opcheck(triton_scan.triton_scan_fwd, fwd)
y, fin, ckpt = triton_scan.triton_scan_fwd(*fwd)
torch.library.opcheck(triton_scan.triton_scan_bwd, (torch.randn_like(y), torch.randn_like(fin),
                                                    u, delta, A, B, C, D, z, bias, ckpt, True,
                                                    *config))
torch.library.opcheck(triton_state_update.triton_state_update,
                      (h0.clone(), u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D,
                       z[..., 0], bias, True))
scan = torch.compile(triton_scan.selective_scan, backend="aot_eager", fullgraph=True)
args = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
out = scan(*args[:6], z=args[6], delta_bias=args[7], delta_softplus=True)
ref = selective_scan_ref(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
out.sum().backward()
print("ok")
"""


@pytest.mark.slow
def test_triton_ops_pass_opcheck_and_compile_under_the_interpreter():
    """(~40 s: opcheck runs each op several times in the Python interpreter of Triton.)"""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
