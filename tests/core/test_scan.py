"""core.selective_scan (C++ CPU backend) against the sequential reference."""
import math

import pytest
import torch

from mambaseq import core
from mambaseq.core.scan_reference import selective_scan_ref
from mambaseq.kernels import cpu_scan
from mambaseq.kernels.cpu_scan import CHECKPOINT_CHUNK, selective_scan_cpu


def make_inputs(batch=2, d_inner=8, d_state=4, length=37, groups=None, dtype=torch.float32,
                gate=True, skip=True, bias=True, init=True, seed=0):
    """Random scan inputs; B/C are (B, N, L) when groups is None, else (B, G, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(
        u=rand(batch, d_inner, length),
        delta=rand(batch, d_inner, length, scale=0.5),
        A=-torch.rand(d_inner, d_state, generator=g, dtype=torch.float64).add(0.1).to(dtype),
        B=rand(*bc_shape), C=rand(*bc_shape),
        D=rand(d_inner) if skip else None,
        z=rand(batch, d_inner, length) if gate else None,
        delta_bias=rand(d_inner, scale=0.5) if bias else None,
        initial_state=rand(batch, d_inner, d_state) if init else None,
    )


SHAPES = [
    dict(length=1),
    dict(length=5, d_state=1),
    dict(length=37),
    dict(length=CHECKPOINT_CHUNK),
    dict(length=2 * CHECKPOINT_CHUNK + 3, groups=2),
    dict(length=50, groups=4, batch=1, d_inner=8),
    dict(length=50, d_state=16, d_inner=3, batch=3, groups=1),
]
FLAGS = [dict(), dict(gate=False, skip=False, bias=False, init=False)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("flags", FLAGS, ids=["all-options", "bare"])
@pytest.mark.parametrize("softplus", [True, False])
def test_forward_and_final_state_match_reference(shape, flags, softplus):
    inputs = make_inputs(**shape, **flags)
    if not softplus:  # without softplus, keep delta > 0 so that the state decays
        inputs["delta"] = inputs["delta"].abs()
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    y, h = core.selective_scan(**inputs, delta_softplus=softplus, return_final_state=True)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=softplus, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_gradients_match_reference_fp64(shape):
    """Every input's gradient, through y and the final state, equals the reference's."""
    inputs = make_inputs(**shape, dtype=torch.float64)
    names = [k for k, v in inputs.items() if v is not None]
    grads = {}
    for fn in (selective_scan_cpu, selective_scan_ref):
        leaves = {k: inputs[k].clone().requires_grad_(True) for k in names}
        y, h = fn(**leaves, delta_softplus=True, return_final_state=True)
        gen = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum() \
            + (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum()
        grads[fn] = torch.autograd.grad(loss, [leaves[k] for k in names])
    for name, got, want in zip(names, grads[selective_scan_cpu], grads[selective_scan_ref]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def _grads(fn, inputs, seed=1):
    """y, final state and every input's gradient of a random projection of (y, final state)."""
    names = [k for k, v in inputs.items() if v is not None]
    leaves = {k: inputs[k].detach().clone().requires_grad_(True) for k in names}
    y, h = fn(**leaves, delta_softplus=True, return_final_state=True)
    gen = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum() \
        + (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum()
    return [y, h, *torch.autograd.grad(loss, [leaves[k] for k in names])]


def test_backward_in_several_segments_matches_reference_fp64(monkeypatch):
    """A partial-sum budget of one chunk makes the backward walk 3 segments."""
    monkeypatch.setattr(cpu_scan, "PARTIAL_BUDGET", 1)
    inputs = make_inputs(batch=2, d_inner=24, d_state=4, length=2 * CHECKPOINT_CHUNK + 9,
                         groups=2, dtype=torch.float64)
    for got, want in zip(_grads(selective_scan_cpu, inputs), _grads(selective_scan_ref, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _time_major(t):
    """The same values as a (..., L) tensor whose last-but-one dimension has unit stride, as
    the transposed output of a Linear layer is."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def test_strided_views_give_the_same_results_as_contiguous_inputs():
    """u, delta, z, B, C as transposed views and slices (the layouts Mamba.forward passes)."""
    inputs = make_inputs(batch=2, d_inner=16, d_state=4, length=CHECKPOINT_CHUNK + 20, groups=2)
    bc = torch.cat([inputs["B"], inputs["C"]], dim=2)              # (B, G, 2N, L)
    views = dict(inputs, u=_time_major(inputs["u"]), delta=_time_major(inputs["delta"]),
                 z=_time_major(inputs["z"]), B=_time_major(bc)[:, :, :4], C=_time_major(bc)[:, :, 4:])
    assert not views["B"].is_contiguous() and not views["z"].is_contiguous()
    for got, want in zip(_grads(selective_scan_cpu, views), _grads(selective_scan_cpu, inputs)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_results_bitwise_equal_for_any_thread_count():
    inputs = make_inputs(batch=3, d_inner=40, d_state=8, length=CHECKPOINT_CHUNK + 40, groups=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(selective_scan_cpu, inputs)
        torch.set_num_threads(3)
        three = _grads(selective_scan_cpu, inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


def test_gradcheck_every_input_and_both_states():
    inputs = make_inputs(batch=1, d_inner=2, d_state=3, length=CHECKPOINT_CHUNK + 5, groups=2,
                         dtype=torch.float64)
    names = list(inputs)
    leaves = [inputs[k].requires_grad_(True) for k in names]

    def fn(*args):
        return selective_scan_cpu(**dict(zip(names, args)), delta_softplus=True,
                                  return_final_state=True)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


def test_fp32_gradients_close_to_fp64_reference():
    inputs = make_inputs(batch=2, d_inner=16, d_state=8, length=CHECKPOINT_CHUNK + 20, groups=2)
    leaves32 = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    leaves64 = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y32 = selective_scan_cpu(**leaves32, delta_softplus=True)
    y64 = selective_scan_ref(**leaves64, delta_softplus=True)
    y32.sum().backward()
    y64.sum().backward()
    for k in inputs:
        torch.testing.assert_close(leaves32[k].grad.double(), leaves64[k].grad,
                                   rtol=1e-3, atol=1e-3, msg=f"gradient of {k}")


def test_chunks_passing_state_equal_whole_sequence():
    inputs = make_inputs(batch=2, d_inner=8, d_state=4, length=301, groups=2)
    whole, h_whole = core.selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    state, pieces = inputs["initial_state"], []
    for start in range(0, 301, 100):
        part = {k: (v[..., start:start + 100] if k in ("u", "delta", "z", "B", "C") else v)
                for k, v in inputs.items()}
        part["initial_state"] = state
        y, state = core.selective_scan(**part, delta_softplus=True, return_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, -1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, h_whole, rtol=1e-5, atol=1e-5)


def test_hand_computed_two_steps():
    """N = E = 1: h1 = exp(d1 a) h0 + d1 b1 u1, y1 = c1 h1 + D u1, y *= silu(z)."""
    a, h0, D = -0.5, 2.0, 0.25
    u, d, b, c, z = [1.0, -2.0], [0.3, 0.7], [1.5, -1.0], [0.5, 2.0], [0.4, -0.1]
    h1 = math.exp(d[0] * a) * h0 + d[0] * b[0] * u[0]
    h2 = math.exp(d[1] * a) * h1 + d[1] * b[1] * u[1]
    silu = [zi / (1 + math.exp(-zi)) for zi in z]
    expected = [(c[0] * h1 + D * u[0]) * silu[0], (c[1] * h2 + D * u[1]) * silu[1]]
    t = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 1, -1)  # noqa: E731
    for fn in (selective_scan_ref, selective_scan_cpu):
        y, h = fn(t(u), t(d), torch.tensor([[a]], dtype=torch.float64), t(b), t(c),
                  D=torch.tensor([D], dtype=torch.float64), z=t(z),
                  initial_state=torch.tensor([[[h0]]], dtype=torch.float64),
                  return_final_state=True)
        torch.testing.assert_close(y.flatten(), torch.tensor(expected, dtype=torch.float64))
        assert h.item() == pytest.approx(h2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_fp32_output_in_input_dtype(dtype):
    inputs = make_inputs(batch=2, d_inner=8, d_state=4, length=200, dtype=dtype)
    y, h = core.selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    y_ref, h_ref = selective_scan_ref(**{k: v.float() for k, v in inputs.items()},
                                      delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(y.float(), y_ref.to(dtype).float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    core.selective_scan(**leaves, delta_softplus=True).float().sum().backward()
    assert all(v.grad.dtype == dtype and torch.isfinite(v.grad).all() for v in leaves.values())


@pytest.mark.parametrize("change, message", [
    (dict(delta=torch.zeros(2, 8, 36)), "delta must have shape"),
    (dict(A=torch.zeros(7, 4)), "A must be"),
    (dict(B=torch.zeros(2, 3, 4, 37)), "do not divide d_inner"),
    (dict(C=torch.zeros(2, 4, 4, 37)), "B has 1 groups but C has 4"),
    (dict(D=torch.zeros(9)), "D must have shape"),
    (dict(initial_state=torch.zeros(2, 8, 5)), "initial_state must have shape"),
    (dict(u=torch.zeros(2, 8)), "u must be"),
    (dict(z=torch.zeros(2, 8, 37, device="meta")), "one device"),
])
def test_clear_errors(change, message):
    inputs = make_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        core.selective_scan(**inputs)


def test_unsupported_device_named():
    inputs = {k: v.to("meta") for k, v in make_inputs().items()}
    with pytest.raises(NotImplementedError, match="meta"):
        core.selective_scan(**inputs)


def test_state_update_is_one_step_of_the_scan():
    inputs = make_inputs(batch=2, d_inner=8, d_state=4, length=1, groups=2)
    y, h = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    state = inputs["initial_state"].clone()
    y_t = core.selective_state_update(
        state, inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"], inputs["B"][..., 0],
        inputs["C"][..., 0], D=inputs["D"], z=inputs["z"][..., 0],
        dt_bias=inputs["delta_bias"], dt_softplus=True)
    torch.testing.assert_close(y_t, y[..., 0])
    torch.testing.assert_close(state, h)
