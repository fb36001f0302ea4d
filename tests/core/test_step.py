"""The one recurrent step: the C++ CPU kernel == its PyTorch spec == forward, for every model
that steps, including after the weights change; the one cache type (the state a forward
returns steps on, and the reverse; reset zeroes it in place); the one sampling loop: batched
generation from prompts of different lengths equals each row alone, and it draws the tokens
of the two loops it replaced."""
import pytest
import torch

from mambaseq import core
from mambaseq.core import (InferenceCache, Mamba, MambaBackbone, MambaBackboneConfig, MambaLM,
                           MambaLMConfig)
from mambaseq.mamba_audio.model import AudioLM
from mambaseq.mamba_audio.sampler import generate as generate_audio


@pytest.fixture(autouse=True)
def _one_thread(seeded_one_thread):
    yield


def perturb(model, scale=0.05):
    """Move every weight off its init, in place (bumps the parameters' version counters)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def step_all(model, xs, cache):
    """Stack model.step over the time axis of xs (B, L, ...)."""
    return torch.stack([model.step(xs[:, t], cache) for t in range(xs.shape[1])], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3, 12])        # 12: the projections go to ATen's mm
@pytest.mark.parametrize("d_conv,bias", [(4, False), (3, True)])
def test_kernel_equals_torch_step_and_forward(dtype, batch, d_conv, bias):
    blk = perturb(Mamba(32, d_state=8, d_conv=d_conv, bias=bias, dtype=dtype).eval())
    x = torch.randn(batch, 20, 32, dtype=dtype)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-8, rtol=1e-7)
    with torch.no_grad():
        cache = blk.allocate_cache(batch)
        assert blk.step_backend(x[:, 0], cache) == "cpu"
        fast = step_all(blk, x, cache)
        ref_cache = blk.allocate_cache(batch)
        ref = torch.stack([blk.step_torch(x[:, t], ref_cache) for t in range(20)], 1)
        full = blk(x)
    torch.testing.assert_close(fast, ref, **tol)
    torch.testing.assert_close(fast, full, **tol)
    torch.testing.assert_close(cache.ssm, ref_cache.ssm, **tol)
    torch.testing.assert_close(cache.conv, ref_cache.conv, **tol)


def test_step_continues_the_state_a_forward_returns():
    """forward's conv state is a non-contiguous view; step takes it as it is."""
    blk = perturb(Mamba(32).eval())
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        full = blk(x)
        _, state = blk(x[:, :21], return_state=True)
        assert not state.conv.is_contiguous()
        stepped = step_all(blk, x[:, 21:], state)
    torch.testing.assert_close(stepped, full[:, 21:], atol=1e-5, rtol=1e-4)


def test_step_with_gradients_takes_the_differentiable_path():
    blk = perturb(Mamba(16))
    x = torch.randn(2, 16)
    cache = blk.allocate_cache(2)
    cache.ssm.normal_()                  # A acts on the state: a zero state hides it
    assert blk.step_backend(x, cache) == "torch"
    blk.step(x, cache).sum().backward()
    assert blk.A_log.grad is not None and blk.A_log.grad.abs().sum() > 0


def test_add_residual_needs_pre_norm():
    blk = Mamba(16)
    with pytest.raises(ValueError, match="add_residual=True needs pre_norm"):
        blk.step(torch.randn(1, 16), blk.allocate_cache(1), add_residual=True)


def _lm():
    return perturb(MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2)).eval())


def _audio():
    import mambaseq.mamba_audio.pooling  # noqa: F401  (registers "sashimi")
    return perturb(AudioLM.from_preset("tiny").eval(), 0.02)


def _backbone():
    return perturb(MambaBackbone(MambaBackboneConfig(d_model=32, n_layer=2)).eval())


@pytest.mark.parametrize("make,kind,length", [(_backbone, "x", 25), (_lm, "ids", 25),
                                              (_audio, "audio", 40)])
def test_step_equals_forward_after_a_weight_update(make, kind, length):
    """A training step and a load_state_dict change the weights in place: the step's cached
    constants (A = -exp(A_log)) must follow, or step and forward part ways."""
    model = make()
    if kind == "x":
        inputs = torch.randn(2, length, 32)
    else:
        inputs = torch.randint(0, 256 if kind == "audio" else 16, (2, length))

    def check():
        with torch.no_grad():
            full = model(inputs)
            stepped = step_all(model, inputs, model.allocate_cache(2))
        torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)

    check()                                       # fills the step's constant caches
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(inputs)
    (out.float().pow(2).mean()).backward()
    opt.step()                                    # in place: versions bump
    model.eval()
    check()
    other = make()
    perturb(other, 0.1)
    model.load_state_dict(other.state_dict())     # copy_ into the same tensors
    check()


def test_generate_prompts_of_different_lengths_equal_each_row_alone():
    lm = _lm()
    with torch.no_grad():                 # sharpen the logits so argmax ties cannot occur
        lm.embedding.weight.mul_(20)
    lengths = [5, 9, 2]
    prompts = [torch.randint(0, 16, (n,)) for n in lengths]
    padded = torch.full((3, 9), 15)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    out = lm.generate(padded, 12, temperature=0, lengths=torch.tensor(lengths), pad_id=-1)
    assert out.shape == (3, 9 + 12)
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    assert torch.equal(lm.generate(padded, 12, temperature=0, mask=mask, pad_id=-1), out)
    for i, p in enumerate(prompts):
        alone = lm.generate(p[None], 12, temperature=0)[0]
        assert torch.equal(out[i, :len(p) + 12], alone)
        assert (out[i, len(p) + 12:] == -1).all()


def test_generate_sampled_rows_are_reproducible_and_bad_lengths_are_errors():
    lm = _lm()
    padded = torch.randint(0, 16, (2, 6))
    gen = lambda seed: lm.generate(padded, 8, lengths=[3, 6],
                                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(gen(0), gen(0)) and not torch.equal(gen(0), gen(1))
    with pytest.raises(ValueError, match=r"in \[1, 6\]"):
        lm.generate(padded, 2, lengths=[0, 6])
    with pytest.raises(ValueError, match=r"lengths must be \(2,\)"):
        lm.generate(padded, 2, lengths=[3])
    with pytest.raises(ValueError, match="not both"):
        lm.generate(padded, 2, lengths=[3, 6], mask=torch.ones(2, 6, dtype=torch.bool))


def test_every_causal_model_steps_through_the_kernel(monkeypatch):
    """MambaLM and every stage of AudioLM's U-Net go through Mamba.step's CPU kernel."""
    calls = []
    from mambaseq.kernels import cpu_step
    real = cpu_step.mamba_step_cpu
    monkeypatch.setattr(cpu_step, "mamba_step_cpu",
                        lambda *a: calls.append(a[0].shape[-1]) or real(*a))
    audio = _audio()
    with torch.no_grad():
        cache = audio.allocate_cache(1)
        for t in range(audio.total_pool):
            audio.step(torch.tensor([t]), cache)
        lm = _lm()
        lm.step(torch.tensor([1]), lm.allocate_cache(1))
    widths = audio.config.d_model * 2 ** torch.arange(len(audio.config.pool) + 1)
    assert set(widths.tolist()) <= set(calls)         # every level's stages stepped
    assert 32 in calls


def _state_tensors(cache):
    """Every tensor of a cache, depth first (the scratch of the step kernel left out)."""
    found = []
    for value in vars(cache).values():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, torch.Tensor):
                found.append(v)
            elif isinstance(v, InferenceCache):
                found += _state_tensors(v)
    return found


@pytest.mark.parametrize("make,vocab", [(_lm, 16), (_audio, 256)])
def test_reset_zeroes_the_cache_in_place_and_restarts_the_sequence(make, vocab):
    model = make()
    ids = torch.randint(0, vocab, (2, 21))                  # 21: mid-window for the audio pools
    with torch.no_grad():
        fresh = step_all(model, ids, model.allocate_cache(2))
        cache = model.allocate_cache(2)
        step_all(model, ids, cache)
        tensors = _state_tensors(cache)
        assert isinstance(cache, InferenceCache) and any(bool(t.any()) for t in tensors)
        assert cache.reset() is cache
        assert all(not t.any() for t in tensors)             # the same tensors, zeroed
        again = step_all(model, ids, cache)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("make,vocab,cut", [(_lm, 16, 11), (_audio, 256, 32)])
def test_the_state_a_forward_returns_is_the_cache_step_continues_from(make, vocab, cut):
    """And the reverse: a cache steps left (on a pooling boundary) continues a forward."""
    model = make()
    ids = torch.randint(0, vocab, (2, 48))
    with torch.no_grad():
        whole = model(ids)
        _, state = model(ids[:, :cut], return_state=True)
        stepped = step_all(model, ids[:, cut:], state.clone())
        torch.testing.assert_close(stepped, whole[:, cut:], rtol=1e-4, atol=1e-4)
        cache = model.allocate_cache(2)
        step_all(model, ids[:, :cut], cache)
        torch.testing.assert_close(model(ids[:, cut:], state=cache), whole[:, cut:],
                                   rtol=1e-4, atol=1e-4)


def test_a_chunk_cannot_start_inside_a_pooling_window():
    audio = _audio()
    cache = audio.allocate_cache(1)
    with torch.no_grad():
        step_all(audio, torch.randint(0, 256, (1, 5)), cache)
        with pytest.raises(ValueError, match="window boundary"):
            audio(torch.randint(0, 256, (1, 16)), state=cache)


# The tokens MambaLM.generate and mamba_audio.sampler.generate drew before both became
# core.sampling.generate (commit 54abafd, same models, seeds and options): the one loop must
# draw them again.
LM_TOKENS = [[3, 1, 4, 1, 5, 9, 8, 8, 0, 12, 9, 10, 4, 15, 4, 10],
             [2, 6, 5, 3, 3, 15, 15, 15, 1, 1, 9, 13, 13, 1, 0, 0]]
AUDIO_TOKENS = [[214, 31, 246, 26, 11, 250, 79, 166, 15, 207, 205, 224, 108, 12, 232, 207, 193,
                 65, 102, 244],
                [233, 10, 55, 96, 240, 48, 190, 53, 167, 171, 87, 80, 63, 26, 45, 168, 97, 60,
                 55, 145]]
PRIMED_AUDIO_TOKENS = [[100, 140, 120, 246, 236, 46, 168, 192, 75, 233, 209],
                       [100, 140, 120, 238, 203, 29, 125, 237, 135, 107, 238]]


def test_the_one_loop_draws_the_tokens_of_the_loops_it_replaced():
    torch.manual_seed(0)
    lm = perturb(MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2)).eval(), 0.3)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 0, 0]])
    out = lm.generate(prompt, 10, temperature=0.9, top_p=0.95, lengths=[6, 4],
                      generator=torch.Generator().manual_seed(1))
    assert out.tolist() == LM_TOKENS
    torch.manual_seed(0)
    audio = perturb(AudioLM.from_preset("tiny").eval(), 0.05)
    assert generate_audio(audio, 2, 20, top_k=50, seed=2, progress=False).tokens.tolist() == \
        AUDIO_TOKENS
    primed = generate_audio(audio, 2, 8, temperature=0.8, prime=torch.tensor([100, 140, 120]),
                            seed=3, progress=False)
    assert primed.tokens.tolist() == PRIMED_AUDIO_TOKENS and primed.n_prime == 3
    # the same loop, called directly, on the same cache type
    greedy = core.generate(lm, prompt, 5, temperature=0, lengths=[6, 4])
    stepped = core.generate(lm, prompt, 5, temperature=0, lengths=[6, 4], prefill="step")
    assert torch.equal(greedy, lm.generate(prompt, 5, temperature=0, lengths=[6, 4]))
    assert torch.equal(stepped, greedy)
