"""MultiscaleBackbone (SaShiMi U-Net) and the causal SaShiMi pooling of mamba_audio:
shapes, causality off the pool boundaries, step == forward, the pooling protocol."""
import pytest
import torch

import mambaseq.mamba_audio.pooling  # noqa: F401  (registers pooling "sashimi")
from mambaseq.core import MultiscaleBackbone, MultiscaleBackboneConfig, register_pooling
from mambaseq.core.multiscale import linear_pooling
from mambaseq.mamba_audio.pooling import CausalDownPool, CausalUpPool, sashimi_pooling

D = 16


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _multiscale(**config):
    return MultiscaleBackbone(MultiscaleBackboneConfig(d_model=D, **config))


def _causal():
    return _multiscale(pool=[2, 3], causal=True, pooling="sashimi", n_layers_per_stage=1)


def test_shapes_widths_and_cropping():
    bb = _multiscale(pool=[2, 3], width_growth=2, n_layers_per_stage=1)
    assert [s.d_model for s in bb.down_stages] == [16, 32] and bb.center.d_model == 64
    for length in (36, 37, 5):                       # multiple of 6 or padded and cropped
        assert bb(torch.randn(2, length, D)).shape == (2, length, D)


def test_causal_step_equals_forward():
    bb = _causal()
    x = torch.randn(2, 41, D)
    with torch.no_grad():
        y = bb(x)
        cache = bb.allocate_cache(2)
        ys = torch.stack([bb.step(x[:, t], cache) for t in range(41)], 1)
    torch.testing.assert_close(ys, y, rtol=1e-4, atol=1e-5)


def test_causal_chunks_with_state_equal_whole_sequence():
    bb = _causal()
    x = torch.randn(2, 47, D)
    with torch.no_grad():
        whole = bb(x)
        state, parts = None, []
        for lo, hi in ((0, 12), (12, 30), (30, 47)):      # chunks of multiples of 6, then the rest
            if hi < 47:
                y, state = bb(x[:, lo:hi], state=state, return_state=True)
            else:
                y = bb(x[:, lo:hi], state=state)
            parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 6"):
        bb(x[:, :7], return_state=True)
    with pytest.raises(RuntimeError, match="causal=True"):
        _multiscale(pool=[2, 3], n_layers_per_stage=1)(x, return_state=True)


@pytest.mark.parametrize("k", [13, 17, 18])          # 13, 17 inside pooled windows; 18 on one
def test_causal_multiscale_is_causal(k):
    bb = _causal()
    x = torch.randn(1, 36, D)
    x2 = x.clone()
    x2[:, k] += 1.0
    with torch.no_grad():
        y, y2 = bb(x), bb(x2)
    torch.testing.assert_close(y2[:, :k], y[:, :k], rtol=0, atol=0)
    assert (y2[:, k:] - y[:, k:]).abs().max() > 1e-4


def test_noncausal_multiscale_reaches_back():
    bb = _multiscale(pool=[2, 3], n_layers_per_stage=1)
    x = torch.randn(1, 36, D)
    x2 = x.clone()
    x2[:, 30] += 1.0
    with torch.no_grad():
        assert (bb(x2)[:, :30] - bb(x)[:, :30]).abs().max() > 1e-4


def test_causal_needs_a_causal_pooling():
    with pytest.raises(ValueError, match="causal pooling"):
        _multiscale(causal=True)
    with pytest.raises(ValueError, match="not causal"):
        _multiscale(causal=True, pooling="linear")
    with pytest.raises(ValueError, match="unknown pooling"):
        _multiscale(pooling="nope")
    with pytest.raises(RuntimeError, match="causal"):
        _multiscale().allocate_cache(1)


def test_sashimi_pooling_forward_shift_and_step():
    down, up = sashimi_pooling(4, 3, 2)
    assert isinstance(down, CausalDownPool) and isinstance(up, CausalUpPool)
    x = torch.randn(2, 12, 4)
    with torch.no_grad():
        pooled = down(x)                                           # (2, 4, 8)
        back = up(pooled)                                          # (2, 12, 4)
        assert pooled.shape == (2, 4, 8) and back.shape == (2, 12, 4)
        assert torch.equal(back[:, :3], torch.zeros(2, 3, 4))      # first window: zeros
        dc, uc = down.allocate_cache(2), up.allocate_cache(2)
        emitted, outs = [], []
        for t in range(12):
            p = down.step(x[:, t], dc)
            emitted.append(p is not None)
            outs.append(up.step(None if p is None else pooled[:, t // 3], uc))
            if p is not None:
                torch.testing.assert_close(p, pooled[:, t // 3])
    assert emitted == [False, False, True] * 4
    torch.testing.assert_close(torch.stack(outs, 1), back)
    with pytest.raises(RuntimeError, match="mid-window"):
        up.step(pooled[:, 0], up.allocate_cache(2))


def test_register_custom_pooling():
    register_pooling("test-linear", linear_pooling)
    bb = _multiscale(pool=[2], n_layers_per_stage=1, pooling="test-linear")
    assert bb.config.pooling == "test-linear"
    assert bb(torch.randn(1, 8, D)).shape == (1, 8, D)
