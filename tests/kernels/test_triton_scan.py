"""Triton selective scan against ``selective_scan_ref``, on the CPU under the Triton interpreter.

triton 3.8 decides between compiled and interpreted kernels when a ``@triton.jit``
function is defined (``triton.knobs.runtime.interpret`` reads TRITON_INTERPRET), i.e. when
``kernels.triton_scan`` is imported, so the variable is set before that import; it stays
set for the rest of the test process.

Tolerances, as max |actual - expected| <= tol * max |expected| per tensor:
fp32 inputs 1e-4 (the kernel only reorders fp32 sums); fp16/bf16 inputs 2e-2 (both sides
compute in fp32 from the same rounded inputs; the results are rounded back, 2^-8 for bf16).
Shapes are tiny because the interpreter runs every program in Python.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mambaseq.core.scan_reference import selective_scan_ref  # noqa: E402
from mambaseq.kernels import triton_scan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, d_inner, d_state, length, groups, dtype, full=True, seed=0):
    """Random scan arguments as a dict of leaf tensors that require grad.

    With ``full``: grouped B/C (B, G, N, L), D, z, delta_bias, softplus and an initial
    state; otherwise only u, delta (positive), A and B/C (B, N, L).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, offset=0.0, kind=torch.randn):
        return (kind(*shape, generator=gen) * scale + offset).to(dtype).requires_grad_()

    bc_shape = (batch, groups, d_state, length) if full else (batch, d_state, length)
    args = {
        "u": rand(batch, d_inner, length),
        "delta": (rand(batch, d_inner, length, scale=0.5) if full
                  else rand(batch, d_inner, length, kind=torch.rand, scale=0.5, offset=0.05)),
        "A": rand(d_inner, d_state, kind=torch.rand, scale=-1.0, offset=-0.5).detach().float()
        .requires_grad_(),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
    }
    if full:
        args.update(D=rand(d_inner), z=rand(batch, d_inner, length),
                    delta_bias=rand(d_inner, scale=0.3),
                    initial_state=rand(batch, d_inner, d_state).detach().float().requires_grad_())
    return args


def assert_close(actual, expected, tol, what):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    assert err <= tol * max(scale, 1e-6), f"{what}: max error {err:.3g} vs max |expected| {scale:.3g}"


def check_against_reference(args, softplus, tol):
    """Forward, final state and the gradient of every tensor argument vs the reference."""
    y, h = triton_scan.selective_scan(**args, delta_softplus=softplus, return_final_state=True)
    y_ref, h_ref = selective_scan_ref(**args, delta_softplus=softplus, return_final_state=True)
    assert_close(y, y_ref, tol, "y")
    assert_close(h, h_ref, tol, "final state")
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=gen).to(y.dtype)
    dh = torch.randn(h.shape, generator=gen)
    leaves = list(args.values())
    # allow_unused: with L = 0 the reference's y does not depend on every input.
    grads, grads_ref = (
        torch.autograd.grad((out.float() * dy).sum() + (state * dh).sum(), leaves,
                            allow_unused=True, materialize_grads=True)
        for out, state in ((y, h), (y_ref, h_ref)))
    for name, grad, grad_ref in zip(args, grads, grads_ref):
        assert_close(grad, grad_ref, tol, f"d{name}")


@pytest.mark.parametrize("batch, d_inner, d_state, length, groups, chunk", [
    (1, 4, 4, 0, 1, 64),     # empty sequence: the initial state passes through
    (2, 4, 4, 1, 1, 64),     # a single step
    (2, 4, 8, 37, 2, 64),    # shorter than one chunk; one channel block per group
    (1, 8, 4, 64, 1, 64),    # exactly one chunk; two channel blocks share the group (atomics)
    (1, 4, 5, 100, 2, 16),   # 7 chunks, the last partial; d_state not a power of two
    (1, 8, 4, 50, 4, 16),    # 4 chunks; four groups of two channels
])
def test_scan_fp32_matches_reference(monkeypatch, batch, d_inner, d_state, length, groups, chunk):
    monkeypatch.setattr(triton_scan, "CHUNK_SIZE", chunk)
    args = make_inputs(batch, d_inner, d_state, length, groups, torch.float32)
    check_against_reference(args, softplus=True, tol=1e-4)


@pytest.mark.parametrize("length", [16, 45])
def test_scan_without_optional_arguments(monkeypatch, length):
    """No D, z, bias, softplus or initial state; ungrouped (B, N, L) B/C."""
    monkeypatch.setattr(triton_scan, "CHUNK_SIZE", 16)
    args = make_inputs(2, 4, 4, length, 1, torch.float32, full=False)
    check_against_reference(args, softplus=False, tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_low_precision_inputs(monkeypatch, dtype):
    monkeypatch.setattr(triton_scan, "CHUNK_SIZE", 16)
    args = make_inputs(2, 4, 4, 40, 2, dtype)
    y = triton_scan.selective_scan(**args, delta_softplus=True)
    assert y.dtype == dtype
    check_against_reference(args, softplus=True, tol=2e-2)


def test_chunked_calls_equal_one_call(monkeypatch):
    """Passing the final state into the next call continues the sequence exactly."""
    monkeypatch.setattr(triton_scan, "CHUNK_SIZE", 16)
    args = {k: v.detach() for k, v in make_inputs(1, 4, 4, 70, 2, torch.float32).items()}
    y, h = triton_scan.selective_scan(**args, delta_softplus=True, return_final_state=True)
    first = {k: v[..., :30] if v.dim() >= 3 and k != "initial_state" else v
             for k, v in args.items()}
    rest = {k: v[..., 30:] if v.dim() >= 3 and k != "initial_state" else v
            for k, v in args.items()}
    y1, h1 = triton_scan.selective_scan(**first, delta_softplus=True, return_final_state=True)
    rest["initial_state"] = h1
    y2, h2 = triton_scan.selective_scan(**rest, delta_softplus=True, return_final_state=True)
    assert_close(torch.cat([y1, y2], dim=-1), y, 1e-5, "y")
    assert_close(h2, h, 1e-5, "final state")


def test_fp64_is_refused():
    args = {k: v.detach().double() for k, v in make_inputs(1, 4, 4, 8, 1, torch.float32).items()}
    with pytest.raises(ValueError, match="fp64"):
        triton_scan.selective_scan(**args)


def test_cpu_tensors_without_interpreter_raise_a_clear_error():
    code = ("import torch\nfrom mambaseq import kernels\n"
            "u = torch.randn(1, 4, 8); B = torch.randn(1, 4, 8)\n"
            "kernels.selective_scan(u, u, -torch.rand(4, 4), B, B)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr and "TRITON_INTERPRET=1" in result.stderr
