"""Triton ``selective_state_update`` against one step of the reference, under the interpreter.

TRITON_INTERPRET is set before ``kernels`` imports triton: triton 3.8 reads it when a
``@triton.jit`` function is defined (see tests/test_triton_scan.py).
Tolerance: fp32 1e-5 relative to the largest expected value (only the N-term sum is
reordered); bf16 x/dt/B/C with an fp32 state 1e-2 (y is rounded to bf16, 2^-8).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from mambaseq.core.scan_reference import selective_scan_ref  # noqa: E402
from mambaseq.core.state_update import selective_state_update_ref  # noqa: E402
from mambaseq.kernels.triton_state_update import selective_state_update  # noqa: E402


def make_step_inputs(batch, d_inner, d_state, groups, dtype, full, seed=0):
    """(state, kwargs) for one step; grouped (B, G, N) B/C when groups > 1."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    bc_shape = (batch, groups, d_state) if groups > 1 else (batch, d_state)
    state = torch.randn(batch, d_inner, d_state, generator=gen)
    kwargs = dict(x=rand(batch, d_inner), dt=rand(batch, d_inner).abs() * 0.5,
                  A=-torch.rand(d_inner, d_state, generator=gen) - 0.5,
                  B=rand(*bc_shape), C=rand(*bc_shape))
    if full:
        kwargs.update(D=rand(d_inner), z=rand(batch, d_inner), dt_bias=rand(d_inner) * 0.3,
                      dt_softplus=True)
    return state, kwargs


def assert_close(actual, expected, tol, what):
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.abs().max().item()
    assert actual.dtype == expected.dtype, what
    assert err <= tol * max(scale, 1e-6), f"{what}: max error {err:.3g} vs max |expected| {scale:.3g}"


@pytest.mark.parametrize("batch, d_inner, d_state, groups, full", [
    (2, 6, 5, 1, False),    # bare step; E and N not powers of two (masked lanes)
    (2, 8, 4, 2, True),     # D, z, dt_bias, softplus; two groups
    (1, 24, 8, 3, True),    # two channel blocks of 16, the first spanning two groups
])
def test_step_matches_reference(batch, d_inner, d_state, groups, full):
    state, kwargs = make_step_inputs(batch, d_inner, d_state, groups, torch.float32, full)
    state_ref = state.clone()
    y = selective_state_update(state, **kwargs)
    y_ref = selective_state_update_ref(state_ref, **kwargs)
    assert_close(y, y_ref, 1e-5, "y")
    assert_close(state, state_ref, 1e-5, "state (updated in place)")


def test_step_bf16_inputs_fp32_state():
    state, kwargs = make_step_inputs(2, 8, 4, 2, torch.bfloat16, full=True)
    state_ref = state.clone()
    y = selective_state_update(state, **kwargs)
    y_ref = selective_state_update_ref(state_ref, **kwargs)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert_close(y, y_ref, 1e-2, "y")
    assert_close(state, state_ref, 1e-5, "state")


def test_steps_equal_the_scan():
    """Five steps from an initial state equal the reference scan over those five steps."""
    batch, d_inner, d_state, groups, length = 2, 4, 4, 2, 5
    gen = torch.Generator().manual_seed(3)
    u, dt, z = (torch.randn(batch, d_inner, length, generator=gen) for _ in range(3))
    Bm, Cm = (torch.randn(batch, groups, d_state, length, generator=gen) for _ in range(2))
    A = -torch.rand(d_inner, d_state, generator=gen) - 0.5
    D, dt_bias = torch.randn(d_inner, generator=gen), torch.randn(d_inner, generator=gen)
    h0 = torch.randn(batch, d_inner, d_state, generator=gen)
    y_ref, h_ref = selective_scan_ref(u, dt, A, Bm, Cm, D=D, z=z, delta_bias=dt_bias,
                                      delta_softplus=True, initial_state=h0,
                                      return_final_state=True)
    state = h0.clone()
    ys = [selective_state_update(state, u[..., t], dt[..., t], A, Bm[..., t], Cm[..., t], D=D,
                                 z=z[..., t], dt_bias=dt_bias, dt_softplus=True)
          for t in range(length)]
    assert_close(torch.stack(ys, dim=-1), y_ref, 1e-5, "y")
    assert_close(state, h_ref, 1e-5, "state")


def test_wrong_shape_is_named():
    state, kwargs = make_step_inputs(2, 4, 4, 1, torch.float32, full=False)
    kwargs["dt"] = kwargs["dt"][:, :3]
    with pytest.raises(ValueError, match="dt must have shape"):
        selective_state_update(state, **kwargs)
