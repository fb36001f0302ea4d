"""core.Mamba: whole-sequence forward, chunks passing state, recurrent step, init, dtypes."""
import math

import pytest
import torch
import torch.nn.functional as F

from mambaseq import core


@pytest.fixture
def block():
    torch.manual_seed(0)
    return core.Mamba(d_model=16, d_state=8, d_conv=4, expand=2)


def test_shapes_and_defaults(block):
    y = block(torch.randn(3, 21, 16))
    assert y.shape == (3, 21, 16)
    assert block.d_inner == 32 and block.dt_rank == 1
    assert block.A_log.dtype == torch.float32
    torch.testing.assert_close(-torch.exp(block.A_log[0]), -torch.arange(1.0, 9.0))
    assert torch.all(block.D == 1)
    with pytest.raises(TypeError):           # every option after d_model by keyword only
        core.Mamba(16, 8)


def test_dt_init_is_within_dt_min_dt_max():
    blk = core.Mamba(d_model=64, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(blk.dt_proj.bias)
    assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
    # log-uniform: the mean of log dt sits near the middle of the log range
    assert abs(dt.log().mean().item() - (math.log(0.002) + math.log(0.05)) / 2) < 0.3


def test_causal(block):
    x = torch.randn(2, 30, 16)
    x2 = x.clone()
    x2[:, 17:] += torch.randn(2, 13, 16)
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, :17], y2[:, :17])
    assert not torch.allclose(y[:, 17:], y2[:, 17:])


@pytest.mark.parametrize("split", [1, 7, 64])
def test_chunks_passing_state_equal_whole(block, split):
    x = torch.randn(2, 141, 16)
    whole, final = block(x, return_state=True)
    state, pieces = None, []
    for start in range(0, 141, split):
        y, state = block(x[:, start:start + split], state=state, return_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm, final.ssm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.conv, final.conv)


def test_step_equals_forward(block):
    x = torch.randn(2, 40, 16)
    whole, final = block(x, return_state=True)
    cache = block.allocate_cache(2)
    with torch.no_grad():
        steps = torch.stack([block.step(x[:, t], cache) for t in range(40)], dim=1)
    torch.testing.assert_close(steps, whole.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache.ssm, final.ssm.detach(), rtol=1e-4, atol=1e-5)


def test_step_continues_a_forward_prefix(block):
    x = torch.randn(1, 25, 16)
    whole = block(x)
    _, state = block(x[:, :20], return_state=True)
    with torch.no_grad():
        tail = torch.stack([block.step(x[:, t], state) for t in range(20, 25)], dim=1)
    torch.testing.assert_close(tail, whole[:, 20:].detach(), rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter(block):
    block(torch.randn(2, 50, 16)).pow(2).mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_matches_reference_scan_in_fp64(monkeypatch):
    """The block's autograd through the C++ kernel equals autograd through the reference."""
    torch.manual_seed(0)
    blk = core.Mamba(d_model=8, d_state=4).double()
    x = torch.randn(2, 140, 8, dtype=torch.float64)
    blk(x).sum().backward()
    fast = {n: p.grad.clone() for n, p in blk.named_parameters()}
    blk.zero_grad()
    monkeypatch.setattr("mambaseq.core.mamba.selective_scan", core.selective_scan_ref)
    blk(x).sum().backward()
    for n, p in blk.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-8, atol=1e-10, msg=n)


def test_bf16_module_runs_and_keeps_fp32_ssm_state():
    blk = core.Mamba(d_model=16).to(torch.bfloat16)
    blk.A_log.data = blk.A_log.data.float()
    x = torch.randn(2, 33, 16, dtype=torch.bfloat16)
    y, state = blk(x, return_state=True)
    assert y.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    ref = core.Mamba(d_model=16)
    ref.load_state_dict({k: v.float() for k, v in blk.state_dict().items()})
    expected = ref(x.float())
    # bf16 keeps 8 bits of mantissa: ~0.4% relative error here; an output off by 3% fails
    assert ((y.float() - expected).norm() / expected.norm()).item() < 0.02
