"""MambaLM (tied head, step, generate), sampling filters, SequenceClassifier (pooling, masks,
exact RC invariance) and embeddings."""
import pytest
import torch

from mambaseq.core import (MambaLM, MambaLMConfig, RCEmbedding, SequenceClassifier,
                           SequenceClassifierConfig, pool_hidden, sample_logits, top_k_filter,
                           top_p_filter)

V, D = 6, 16
COMPLEMENT = [3, 2, 1, 0, 4, 5]          # A C G T <-> T G C A; N and PAD map to themselves


def _lm():
    return MambaLM(MambaLMConfig(vocab_size=V, d_model=D, n_layer=2))


def _classifier(n_layer=2, **config):
    """A SequenceClassifier of vocabulary V and width D (``config``: its other fields)."""
    return SequenceClassifier(SequenceClassifierConfig(vocab_size=V, d_model=D, n_layer=n_layer,
                                                       **config))


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _rc_ids(ids, lengths):
    """Reverse complement of each row's first ``lengths[b]`` token ids (padding stays)."""
    comp = torch.tensor(COMPLEMENT)
    out = ids.clone()
    for b, n in enumerate(lengths.tolist()):
        out[b, :n] = comp[ids[b, :n].flip(0)]
    return out


# -- language model -------------------------------------------------------------------------
def test_lm_shapes_and_tied_head():
    lm = _lm()
    ids = torch.randint(0, V, (2, 30))
    assert lm(ids).shape == (2, 30, V)
    n_backbone = sum(p.numel() for p in lm.backbone.parameters())
    assert sum(p.numel() for p in lm.parameters()) == n_backbone + V * D   # no separate head
    h = torch.randn(2, 3, D)
    with torch.no_grad():                         # the head is the embedding matrix itself
        torch.testing.assert_close(lm.lm_head(h), h @ lm.embedding.weight.T)
        lm.embedding.weight[:, 0] += 1.0
        torch.testing.assert_close(lm.lm_head(h), h @ lm.embedding.weight.T)


def test_lm_step_equals_forward_and_is_causal():
    lm = _lm()
    ids = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        logits = lm(ids)
        cache = lm.allocate_cache(2)
        steps = torch.stack([lm.step(ids[:, t], cache) for t in range(40)], 1)
        ids2 = ids.clone()
        ids2[:, 25] = (ids2[:, 25] + 1) % V
        logits2 = lm(ids2)
    torch.testing.assert_close(steps, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits2[:, :25], logits[:, :25], rtol=0, atol=0)


def test_generate_is_reproducible_with_a_generator():
    lm = _lm()
    prompt = torch.randint(0, V, (2, 7))
    gen = lambda seed, **kw: lm.generate(prompt, 20, generator=torch.Generator().manual_seed(seed),
                                         **kw)
    a, b, c = gen(1), gen(1), gen(2)
    assert a.shape == (2, 27) and torch.equal(a[:, :7], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(gen(1, top_k=3, top_p=0.8), gen(1, top_k=3, top_p=0.8))


def test_greedy_generate_matches_full_forward_argmax():
    """prefill + recurrent steps must pick the same tokens as re-running the whole sequence."""
    lm = _lm()
    with torch.no_grad():                 # sharpen the logits so argmax ties cannot occur
        lm.embedding.weight.mul_(20)
    prompt = torch.randint(0, V, (2, 5))
    out = lm.generate(prompt, 12, temperature=0)
    assert torch.equal(out, lm.generate(prompt, 12, top_k=1))
    with torch.no_grad():
        logits = lm(out[:, :-1])
    torch.testing.assert_close(logits[:, 4:].argmax(-1), out[:, 5:])


# -- sampling -------------------------------------------------------------------------------
def test_top_k_and_top_p_masks():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda t: torch.isfinite(t)[0].tolist()
    assert kept(top_k_filter(logits, 2)) == [True, True, False, False, False]
    assert kept(top_p_filter(logits, 0.5)) == [True, False, False, False, False]
    assert kept(top_p_filter(logits, 0.6)) == [True, True, False, False, False]
    assert kept(top_p_filter(logits, 0.85)) == [True, True, True, False, False]
    assert kept(top_p_filter(logits, 1.0)) == [True] * 5
    shuffled = logits[:, [3, 0, 4, 2, 1]]                 # order must not matter
    assert kept(top_p_filter(shuffled, 0.6)) == [False, True, False, False, True]
    with pytest.raises(ValueError):
        top_p_filter(logits, 0.0)


def test_sampling_never_draws_masked_tokens():
    logits = torch.randn(4, 50)
    g = torch.Generator().manual_seed(0)
    allowed_k = top_k_filter(logits, 5).isfinite()
    allowed_p = top_p_filter(logits, 0.3).isfinite()
    for _ in range(50):
        tk = sample_logits(logits, top_k=5, generator=g)
        tp = sample_logits(logits, top_p=0.3, generator=g)
        assert allowed_k.gather(1, tk[:, None]).all() and allowed_p.gather(1, tp[:, None]).all()
    assert torch.equal(sample_logits(logits, temperature=0), logits.argmax(-1))


# -- classifier and embeddings --------------------------------------------------------------
def test_pool_hidden_against_hand_computation():
    h = torch.randn(2, 6, 3)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(pool_hidden(h, mask, "mean")[1], h[1, :4].mean(0))
    torch.testing.assert_close(pool_hidden(h, mask, "max")[1], h[1, :4].amax(0))
    torch.testing.assert_close(pool_hidden(h, mask, "last")[1], h[1, 3])
    torch.testing.assert_close(pool_hidden(h, None, "last"), h[:, -1])


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_padded_equals_unpadded(pooling, bidirectional):
    clf = _classifier(num_classes=3, pooling=pooling, bidirectional=bidirectional)
    ids = torch.randint(0, 4, (2, 33))
    mask = torch.ones(2, 33, dtype=torch.bool)
    mask[1, 20:] = False
    ids[1, 20:] = 5                                   # PAD
    logits = clf(ids, mask)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1:], clf(ids[1:, :20]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clf.embed(ids, mask, pooling=pooling)[1:],
                               clf.embed(ids[1:, :20], pooling=pooling), rtol=1e-5, atol=1e-5)
    assert clf.embed(ids, mask).shape == (2, 33, D)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_rc_equivariant_classifier_is_exactly_rc_invariant(pooling):
    clf = _classifier(num_classes=3, pooling=pooling, bidirectional=True, rc_equivariant=True,
                      complement=COMPLEMENT)
    ids = torch.randint(0, 5, (2, 33))
    mask = torch.ones(2, 33, dtype=torch.bool)
    mask[1, 21:] = False
    ids[1, 21:] = 5
    rc = _rc_ids(ids, mask.sum(1))
    torch.testing.assert_close(clf(rc, mask), clf(ids, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clf.embed(rc, mask, pooling=pooling),
                               clf.embed(ids, mask, pooling=pooling), rtol=1e-5, atol=1e-6)
    # without RC parameter sharing the same check fails
    plain = _classifier(num_classes=3, pooling=pooling, bidirectional=True)
    assert (plain(rc, mask) - plain(ids, mask)).abs().max() > 1e-4


def test_rc_embedding_is_equivariant_and_validates_the_map():
    emb = RCEmbedding(V, D, COMPLEMENT)
    ids = torch.randint(0, 5, (1, 10))
    rc = _rc_ids(ids, torch.tensor([10]))
    torch.testing.assert_close(emb(rc), emb(ids).flip(1).flip(-1))
    with pytest.raises(ValueError, match="involution"):
        RCEmbedding(4, D, [1, 2, 3, 0])
    with pytest.raises(ValueError, match="permutation"):
        RCEmbedding(4, D, [0, 0, 1, 2])


def test_classifier_argument_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        _classifier(1, num_classes=2, rc_equivariant=True, complement=COMPLEMENT)
    with pytest.raises(ValueError, match="complement"):
        _classifier(1, num_classes=2, bidirectional=True, rc_equivariant=True)
    with pytest.raises(ValueError, match="RC-invariant"):
        _classifier(1, num_classes=2, pooling="last", bidirectional=True,
                    rc_equivariant=True, complement=COMPLEMENT)
    with pytest.raises(ValueError, match="pooling"):
        _classifier(1, num_classes=2, pooling="attention")


def test_ngram_embedding_indexes_the_kmer_ending_at_each_position():
    from mambaseq.core import NgramEmbedding
    letters = [-1, -1, 0, 1, 2, 3]                  # ids 2..5 are four letters, 0/1 are not
    emb = NgramEmbedding(6, 8, n=3, letters=letters)
    ids = torch.tensor([[2, 3, 4, 5, 0, 2, 3, 4]])
    expected = []
    for t in range(ids.shape[1]):
        window = [letters[int(i)] for i in ids[0, max(0, t - 2):t + 1]]
        if t < 2 or min(window) < 0:
            expected.append(4 ** 3)
        else:
            expected.append(window[0] * 16 + window[1] * 4 + window[2])
    assert emb.ngram_ids(ids)[0].tolist() == expected
    # causal: a later token never changes an earlier position's embedding
    later = ids.clone()
    later[0, 6] = 5
    torch.testing.assert_close(emb(ids)[:, :6], emb(later)[:, :6])
    assert not torch.allclose(emb(ids)[:, 6], emb(later)[:, 6])


def test_ngram_classifier_saves_and_reloads(tmp_path):
    from mambaseq.core import load_pretrained
    torch.manual_seed(0)
    config = dict(vocab_size=10, d_model=16, n_layer=1, num_classes=3, ngram=2)
    clf = SequenceClassifier(SequenceClassifierConfig(
        **config, ngram_letters=[-1] * 4 + [0, 1, 2, 3] + [-1] * 2))
    ids = torch.randint(0, 10, (2, 12))
    clf.save_pretrained(tmp_path / "clf")
    again = load_pretrained(tmp_path / "clf")
    torch.testing.assert_close(again(ids), clf(ids))
    with pytest.raises(ValueError, match="ngram needs ngram_letters"):
        SequenceClassifierConfig(**config)


def test_strand_average_scores_a_window_and_its_reverse_complement(tmp_path):
    from mambaseq.core import load_pretrained
    clf = _classifier(1, num_classes=3, complement=COMPLEMENT, strand_average=True)
    ids = torch.randint(0, 4, (2, 25))
    mask = torch.ones(2, 25, dtype=torch.bool)
    mask[1, 17:] = False
    ids[1, 17:] = 5
    rc = _rc_ids(ids, mask.sum(1))
    with torch.no_grad():
        both = clf.log_probs(ids, mask)
        expected = ((clf(ids, mask).log_softmax(-1) + clf(rc, mask).log_softmax(-1)) / 2
                    ).log_softmax(-1)
        torch.testing.assert_close(both, expected)
        torch.testing.assert_close(both.exp().sum(-1), torch.ones(2))
        # invariant to the strand it is given, though the causal model itself is not
        torch.testing.assert_close(clf.log_probs(rc, mask), both, rtol=1e-5, atol=1e-6)
        assert (clf(rc, mask) - clf(ids, mask)).abs().max() > 1e-4
        clf.save_pretrained(tmp_path / "clf")
        torch.testing.assert_close(load_pretrained(tmp_path / "clf").log_probs(ids, mask), both)
        one_strand = _classifier(1, num_classes=3)
        torch.testing.assert_close(one_strand.log_probs(ids), one_strand(ids).log_softmax(-1))
    with pytest.raises(ValueError, match="complement"):
        _classifier(1, num_classes=3, strand_average=True)
    with pytest.raises(ValueError, match="redundant"):
        _classifier(1, num_classes=3, bidirectional=True, rc_equivariant=True,
                    complement=COMPLEMENT, strand_average=True)
