"""Causal and bidirectional backbones: shapes, causality, step == forward, chunked == whole,
padded == unpadded, shared projections, reverse-complement equivariance, 1M-step memory."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from mambaseq.core import (BiMamba, BiMambaBackbone, BiMambaBackboneConfig, Mamba, MambaBackbone,
                           MambaBackboneConfig, reverse_complement_hidden)
from mambaseq.core.bimamba import reverse_within

D = 16


def _causal(n_layer, **config):
    return MambaBackbone(MambaBackboneConfig(d_model=D, n_layer=n_layer, **config))


def _bidirectional(n_layer, d_model=D, **config):
    return BiMambaBackbone(BiMambaBackboneConfig(d_model=d_model, n_layer=n_layer, **config))


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _padded_pair(length=40, short=27):
    """x (2, L, D) and a right-padding mask whose second row has ``short`` real steps."""
    x = torch.randn(2, length, D)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, short:] = False
    return x, mask


# -- causal ---------------------------------------------------------------------------------
def test_backbone_shapes_and_state_layout():
    bb = _causal(3)
    y, state = bb(torch.randn(2, 37, D), return_state=True)
    assert y.shape == (2, 37, D)
    assert len(state.layers) == 3 and state.layers[0].ssm.shape == (2, 2 * D, 16)


def test_backbone_is_causal():
    bb = _causal(2)
    x = torch.randn(1, 50, D)
    x2 = x.clone()
    x2[:, 31] += 1.0
    y, y2 = bb(x), bb(x2)
    torch.testing.assert_close(y2[:, :31], y[:, :31], rtol=0, atol=0)
    assert (y2[:, 31:] - y[:, 31:]).abs().max() > 1e-3


def test_backbone_step_equals_forward():
    bb = _causal(2)
    x = torch.randn(2, 40, D)
    with torch.no_grad():
        y = bb(x)
        cache = bb.allocate_cache(2)
        ys = torch.stack([bb.step(x[:, t], cache) for t in range(40)], 1)
    torch.testing.assert_close(ys, y, rtol=1e-4, atol=1e-5)


def test_backbone_chunked_equals_whole_and_state_passing():
    bb = _causal(2, chunk_size=16)
    x = torch.randn(2, 71, D)                        # not a multiple of the chunk size
    whole = bb(x)                                    # grad on: one pass
    with torch.no_grad():
        chunked = bb(x)                              # grad off: 5 chunks passing state
        y1, st = bb(x[:, :30], return_state=True)
        y2 = bb(x[:, 30:], state=st)
    torch.testing.assert_close(chunked, whole.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([y1, y2], 1), whole.detach(), rtol=1e-5, atol=1e-6)


def test_backbone_scaled_init():
    for n_layer in (1, 16):
        bb = _causal(n_layer)
        w = torch.cat([blk.mixer.out_proj.weight.flatten() for blk in bb.layers])
        # kaiming_uniform(a=sqrt(5)) has std 1/sqrt(3 * fan_in); then / sqrt(n_layer)
        expected = 1 / math.sqrt(3 * 2 * D) / math.sqrt(n_layer)
        assert abs(w.std().item() / expected - 1) < 0.15
        dt = torch.nn.functional.softplus(bb.layers[0].mixer.dt_proj.bias)   # kept, not zeroed
        assert dt.min() >= 1e-4 * 0.99 and dt.max() <= 0.1 * 1.01


def test_backbone_padded_equals_unpadded_and_left_padding_refused():
    bb = _causal(2)
    x, mask = _padded_pair()
    y = bb(x, mask=mask)
    alone = bb(x[1:, :27])
    torch.testing.assert_close(y[1:, :27], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="right-padded"):
        bb(x, mask=mask.flip(1))


# -- bidirectional --------------------------------------------------------------------------
def test_bimamba_shares_projections():
    bi, single = BiMamba(D), Mamba(D)
    n_single = sum(p.numel() for p in single.parameters())
    shared = sum(p.numel() for m in (single.in_proj, single.out_proj) for p in m.parameters())
    assert bi.fwd.in_proj is bi.rev.in_proj and bi.fwd.out_proj is bi.rev.out_proj
    assert sum(p.numel() for p in bi.parameters()) == 2 * n_single - shared


def test_bimamba_rc_backbone_has_half_width_parameters():
    full = _bidirectional(2, 2 * D)
    rc = _bidirectional(2, 2 * D, rc_equivariant=True)
    half = _bidirectional(2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(rc) == count(half) < count(full)


@pytest.mark.parametrize("rc", [False, True])
def test_bimamba_shapes_and_bidirectional(rc):
    bb = _bidirectional(2, rc_equivariant=rc)
    x = torch.randn(1, 40, D)
    x2 = x.clone()
    x2[:, 30] += 1.0
    y, y2 = bb(x), bb(x2)
    assert y.shape == (1, 40, D)
    assert (y2[:, :30] - y[:, :30]).abs().max() > 1e-4        # the future reaches the past


@pytest.mark.parametrize("rc", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bimamba_chunked_equals_whole(rc, masked):
    bb = _bidirectional(2, chunk_size=16, rc_equivariant=rc)
    x, mask = _padded_pair(length=53, short=37)
    mask = mask if masked else None
    whole = bb(x, mask=mask).detach()
    with torch.no_grad():
        chunked = bb(x, mask=mask)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rc", [False, True])
def test_bimamba_padded_equals_unpadded(rc):
    bb = _bidirectional(2, rc_equivariant=rc)
    x, mask = _padded_pair()
    y = bb(x, mask=mask)
    alone = bb(x[1:, :27])
    torch.testing.assert_close(y[1:, :27], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[:1], bb(x[:1]), rtol=1e-5, atol=1e-6)


def test_reverse_within_is_a_per_row_involution():
    x = torch.arange(10.).view(2, 5, 1)
    r = reverse_within(x, torch.tensor([5, 3]))
    assert r[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    torch.testing.assert_close(reverse_within(r, torch.tensor([5, 3])), x)


@pytest.mark.parametrize("masked", [False, True])
def test_rc_equivariance_is_exact(masked):
    bb = _bidirectional(3, rc_equivariant=True)
    x, mask = _padded_pair()
    lengths = mask.sum(1) if masked else None
    mask = mask if masked else None
    y = bb(x, mask=mask)
    y_rc = bb(reverse_complement_hidden(x, lengths), mask=mask)
    real = mask if masked else torch.ones(2, 40, dtype=torch.bool)
    torch.testing.assert_close(y_rc[real], reverse_complement_hidden(y, lengths)[real],
                               rtol=1e-5, atol=1e-5)
    # the plain bidirectional stack is not equivariant: the check can fail
    plain = _bidirectional(3)
    diff = plain(reverse_complement_hidden(x)) - reverse_complement_hidden(plain(x))
    assert diff.abs().max() > 1e-2


# -- a million steps ------------------------------------------------------------------------
# Peak memory is the child's own VmHWM: getrusage's ru_maxrss survives exec, so a child of a
# big pytest process would report its parent's peak.
_LONG_FORWARD = textwrap.dedent("""
    import sys, time, torch
    from mambaseq import core
    def status_mb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    torch.manual_seed(0)
    torch.set_num_threads(1)
    kind, length, d_model, n_layer, chunk = sys.argv[1], *map(int, sys.argv[2:])
    bb = (core.MambaBackbone(core.MambaBackboneConfig(d_model=d_model, n_layer=n_layer,
                                                      chunk_size=chunk)) if kind == "causal"
          else core.BiMambaBackbone(core.BiMambaBackboneConfig(
              d_model=d_model, n_layer=n_layer, rc_equivariant=(kind == "birc"))))
    with torch.no_grad():
        bb(torch.randn(1, 64, d_model))
        x = torch.randn(1, length, d_model)
        before = status_mb("VmRSS")
        t = time.perf_counter()
        y = bb(x)
        dt = time.perf_counter() - t
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    print(status_mb("VmHWM"), status_mb("VmHWM") - before, dt)
""")


def _long_forward(kind, length, d_model, n_layer, chunk=2 ** 14):
    """(peak MB, growth MB over the input, seconds) of one gradient-free forward in a fresh
    process."""
    out = subprocess.run([sys.executable, "-c", _LONG_FORWARD, kind, str(length), str(d_model),
                          str(n_layer), str(chunk)], capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-2000:]
    return tuple(map(float, out.stdout.split()[-3:]))


def test_long_forward_in_bounded_memory():
    """(1, 2^16, 32), 2 layers, chunks of 2048: the output is 8 MB; the whole-sequence
    path keeps (L, 2E) activations per layer besides (measured: 188 MB of growth), the
    chunked one only a chunk's (measured: 17 MB)."""
    peak, growth, _ = _long_forward("causal", 2 ** 16, 32, 2, chunk=2048)
    assert growth < 60, f"RSS growth {growth:.0f} MB"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["causal", "bi"])
def test_million_steps_in_bounded_memory(kind):
    """backbone(x) on (1, 2^20, 128), 4 layers, under no_grad: the input and output alone
    are 1 GiB; the whole-sequence path would keep (L, 2E) activations per layer (2 GiB
    each) besides, so a peak under 4 GB and a growth under 2.5 GB show the chunked path."""
    peak, growth, _ = _long_forward(kind, 2 ** 20, 128, 4)
    assert peak < 4000, f"peak RSS {peak:.0f} MB"
    assert growth < 2500, f"RSS growth {growth:.0f} MB"
