"""AudioLM: causality through the pooled stages, step == forward == chunked forward,
checkpoints, and the sampler (determinism, priming, fixed-size cache)."""
import pytest
import torch

from mambaseq import core
from mambaseq.mamba_audio.model import AudioLM, stream_nll_bits
from mambaseq.mamba_audio.sampler import generate, save_clips
from mambaseq.mamba_audio.io import load_audio


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The ops of a tiny model are too small to gain from threads, and lose much to them on
    a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    m = AudioLM.from_preset("tiny", sample_rate=8000).eval()
    # random init has tiny out_proj/up weights; make the pooled paths matter in the checks
    with torch.no_grad():
        for p in m.backbone.up_pools.parameters():
            p.mul_(20.0)
    return m


def _tokens(batch, length, seed=0):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_presets_and_sizes():
    paper = AudioLM.from_preset("paper")
    n = sum(p.numel() for p in paper.parameters())
    assert 5.5e6 < n < 7e6, n
    small = AudioLM.from_preset("small", bits=10, quantizer="linear")
    assert small.head.out_features == 1024 and small.quantizer.kind == "linear"
    with pytest.raises(ValueError, match="unknown preset"):
        AudioLM.from_preset("huge")


@pytest.mark.parametrize("t", [5, 21, 37, 50])   # none is on a 4- or 16-sample boundary
def test_causal_off_pool_boundaries(model, t):
    tok = _tokens(1, 64)
    other = tok.clone()
    other[0, t] = (other[0, t] + 128) % 256
    with torch.no_grad():
        a, b = model(tok), model(other)
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4   # the change is seen from t on


def test_pooled_levels_feed_the_output(model):
    """A change 17 samples back reaches the output only through the pooled levels once it
    has left the conv windows of level 0, so the equality tests above are not vacuous."""
    tok = _tokens(1, 48, seed=1)
    other = tok.clone()
    other[0, 2] = (other[0, 2] + 100) % 256
    with torch.no_grad():
        d = (model(tok) - model(other)).abs()[0, 32:].max()
    assert d > 1e-5


def test_step_matches_forward(model):
    tok = _tokens(2, 70, seed=2)                     # 70: not a multiple of 16
    with torch.no_grad():
        full = model(tok)                            # (2, 70, 256)
        cache = model.allocate_cache(2)
        size = cache.numel()
        stepped = torch.stack([model.step(tok[:, t], cache) for t in range(70)], 1)
    assert size == cache.numel()                     # the cache never grows
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)


def test_chunked_forward_matches_whole(model):
    tok = _tokens(2, 200, seed=3)
    with torch.no_grad():
        whole = model(tok)
        parts, state = [], None
        for start, end in [(0, 48), (48, 64), (64, 160), (160, 200)]:
            if end < 200:
                out, state = model(tok[:, start:end], state=state, return_state=True)
            else:
                out = model(tok[:, start:end], state=state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(tok[:, :40], return_state=True)


def test_stream_nll_bits_is_chunk_invariant(model):
    tok = _tokens(1, 300, seed=4)
    bits_a, n_a = stream_nll_bits(model, tok, chunk_size=32)
    bits_b, n_b = stream_nll_bits(model, tok, chunk_size=4096)
    with torch.no_grad():
        logits = model(tok[:, :-1])
    ref = torch.nn.functional.cross_entropy(logits[0], tok[0, 1:], reduction="sum") / 0.6931471805599453
    assert n_a == n_b == 299
    assert bits_a == pytest.approx(bits_b, rel=1e-5) and bits_a == pytest.approx(float(ref), rel=1e-5)


def test_save_and_load_pretrained(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    for loaded in (AudioLM.from_pretrained(tmp_path / "m"),
                   core.load_pretrained(tmp_path / "m")):
        assert isinstance(loaded, AudioLM)
        assert loaded.sample_rate == 8000 and loaded.quantizer == model.quantizer
        tok = _tokens(1, 40)
        with torch.no_grad():
            assert torch.equal(loaded(tok), model(tok))


def test_generation_is_deterministic_and_primed(model, tmp_path):
    a = generate(model, n_clips=3, n_samples=40, top_p=0.9, seed=7, progress=False)
    b = generate(model, n_clips=3, n_samples=40, top_p=0.9, seed=7, progress=False)
    c = generate(model, n_clips=3, n_samples=40, top_p=0.9, seed=8, progress=False)
    assert a.tokens.shape == (3, 40) and a.n_prime == 0
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.samples_per_second > 0 and a.step_seconds.shape == (40,)
    prime = _tokens(1, 19, seed=5)[0]
    p = generate(model, n_clips=2, n_samples=10, temperature=0, prime=prime, progress=False)
    assert p.tokens.shape == (2, 29) and p.n_prime == 19
    assert torch.equal(p.tokens[:, :19], prime.expand(2, -1))
    # greedy continuation == argmax of the full forward over the primed clip
    with torch.no_grad():
        logits = model(p.tokens[:1, :-1])
    assert torch.equal(logits[0, 18:].argmax(-1), p.tokens[0, 19:])
    paths = save_clips(a.tokens, model.quantizer, model.sample_rate, tmp_path, prefix="g")
    wav, rate = load_audio(paths[0])
    assert len(paths) == 3 and rate == 8000 and wav.shape == (40,)
    assert torch.allclose(wav, model.quantizer.decode(a.tokens[0]), atol=1e-4)


def test_a_batch_of_clips_equals_each_clip_alone(model):
    """The clips of one batch are independent streams: greedy clips from different primes,
    generated together, are those generated one at a time."""
    primes = _tokens(3, 21, seed=4)
    together = generate(model, n_clips=3, n_samples=30, temperature=0, prime=primes,
                        progress=False)
    assert together.prime_seconds > 0 and together.samples_per_second_with_priming > 0
    for i in range(3):
        alone = generate(model, n_clips=1, n_samples=30, temperature=0, prime=primes[i:i + 1],
                         progress=False)
        assert torch.equal(together.tokens[i], alone.tokens[0])


def test_generation_cache_does_not_grow_with_length(model):
    sizes = []
    for n in (16, 64):
        cache_holder = {}
        orig = model.allocate_cache

        def spy(batch, **kw):
            cache_holder["c"] = orig(batch, **kw)
            return cache_holder["c"]

        model.allocate_cache = spy
        try:
            generate(model, n_clips=2, n_samples=n, seed=0, progress=False)
        finally:
            del model.allocate_cache
        sizes.append(cache_holder["c"].numel())
    assert sizes[0] == sizes[1] == model.allocate_cache(2).numel()


def test_folders_saved_before_the_width_growth_rename_load(model, tmp_path):
    """An AudioLM config.json written before the rename calls the width growth "expand"."""
    import json
    model.save_pretrained(tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    payload = json.loads(cfg.read_text())
    payload["config"]["expand"] = payload["config"].pop("width_growth")
    cfg.write_text(json.dumps(payload))
    again = AudioLM.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    tok = _tokens(1, 40)
    with torch.no_grad():
        assert torch.equal(again(tok), model(tok))
