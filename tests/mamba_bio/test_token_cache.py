"""The tokenized genome cache: identity (a changed file is re-encoded), windows and N
fractions equal to what the FASTA readers give, and GenomeWindows batches unchanged by it."""
import json
import os
import shutil

import numpy as np
import pyfaidx
import pytest
import torch
from Bio import bgzf

from mambaseq.mamba_bio import Genome
from mambaseq.mamba_bio.datasets import GenomeWindows, mlm_mask, split_regions
from mambaseq.mamba_bio.fasta import Records, n_fraction
from mambaseq.mamba_bio.token_cache import TokenCache
from mambaseq.mamba_bio.tokenizers import CharTokenizer


USER_CACHE = os.environ.get("MAMBASEQ_CACHE_DIR")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every cache of these tests in a folder of their own."""
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _user_cache(monkeypatch):
    """The cache folder of the session (tests that run a model: its CPU kernel is built
    there once)."""
    if USER_CACHE is None:
        monkeypatch.delenv("MAMBASEQ_CACHE_DIR")
    else:
        monkeypatch.setenv("MAMBASEQ_CACHE_DIR", USER_CACHE)


def _genome(seed=0, n_records=3, length=5000):
    """Records with N blocks, soft-masked (lowercase) stretches and a few IUPAC codes."""
    rng = np.random.default_rng(seed)
    records = {}
    for i in range(n_records):
        seq = np.array(list("ACGT"))[rng.integers(0, 4, length + 600 * i)]
        for lo in rng.integers(0, len(seq) - 300, 3):
            seq[lo:lo + int(rng.integers(20, 300))] = "N"
        for lo in rng.integers(0, len(seq) - 500, 4):
            hi = lo + int(rng.integers(50, 500))
            seq[lo:hi] = np.char.lower(seq[lo:hi])
        seq[rng.integers(0, len(seq), 5)] = "R"
        records[f"chr{i + 1}"] = "".join(seq)
    return records


def _write(path, records, width=60):
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name} test\n")
            f.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
    return path


def _token_files(cache_dir):
    return sorted(p.name for p in (cache_dir / "tokens").glob("*.tokens"))


def test_windows_equal_pyfaidx_bases_on_both_strands(tmp_path):
    records = _genome()
    path = _write(tmp_path / "g.fa", records, width=61)
    tok = CharTokenizer()
    cache = TokenCache.open(Genome(path), tok)
    fa = pyfaidx.Fasta(str(shutil.copy(path, tmp_path / "ref.fa")), sequence_always_upper=False)
    rng = np.random.default_rng(1)
    for _ in range(200):
        name = f"chr{rng.integers(1, 4)}"
        start = int(rng.integers(0, len(records[name])))
        end = int(rng.integers(start, len(records[name]) + 1))
        plus = fa[name][start:end]
        assert np.array_equal(cache.tokens(name, start, end), tok.encode_numpy(plus.seq))
        assert np.array_equal(cache.tokens(name, start, end, "-"),
                              tok.encode_numpy(plus.reverse.complement.seq))
        assert cache.n_fraction(name, start, end) == n_fraction(plus.seq)


def test_n_fraction_equals_a_direct_count_across_blocks(tmp_path, monkeypatch):
    from mambaseq.mamba_bio import token_cache
    monkeypatch.setattr(token_cache, "BLOCK", 64)       # many whole blocks in a window
    monkeypatch.setattr(token_cache, "CHUNK", 1000)     # chunks not aligned to blocks
    records = _genome(seed=3)
    cache = TokenCache.open(Genome(_write(tmp_path / "g.fa", records)), CharTokenizer())
    assert len(cache.nsum) == cache.total // 64 + 1
    rng = np.random.default_rng(2)
    for _ in range(300):
        name = f"chr{rng.integers(1, 4)}"
        start = int(rng.integers(0, len(records[name])))
        end = int(rng.integers(start, min(start + 2000, len(records[name])) + 1))
        seq = records[name][start:end]
        direct = sum(c not in "ACGTacgt" for c in seq)
        assert cache.n_count(name, start, end) == direct
        assert cache.n_fraction(name, start, end) == n_fraction(seq)


def test_soft_masking_kept_or_folded_as_the_tokenizer_does(tmp_path):
    path = _write(tmp_path / "g.fa", {"chr1": "ACGTacgtNn" * 10})
    genome = Genome(path)
    folded = TokenCache.open(genome, CharTokenizer())
    assert folded.tokens("chr1", 0, 10).tolist() == [4, 5, 6, 7, 4, 5, 6, 7, 8, 8]
    kept = TokenCache.open(genome, CharTokenizer(uppercase=False))
    assert kept.path != folded.path                     # one cache per tokenizer config
    assert kept.codes("chr1", 0, 10).tolist() == [4, 5, 6, 7, 68, 69, 70, 71, 8, 72]
    assert kept.codes("chr1", 0, 10, "-").tolist() == [72, 8, 68, 69, 70, 71, 4, 5, 6, 7]
    assert kept.tokens("chr1", 0, 4).tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"unknown base 'a' at position 2 in .*g.fa:chr1:2"):
        kept.tokens("chr1", 2, 8)                        # the tokenizer's own error
    assert folded.n_fraction("chr1", 0, 100) == kept.n_fraction("chr1", 0, 100) \
        == n_fraction("ACGTacgtNn" * 10)


@pytest.mark.parametrize("change", ["edit", "grow", "truncate", "same_size_same_mtime"])
def test_a_changed_file_is_encoded_again(tmp_path, cache_dir, change):
    path = _write(tmp_path / "g.fa", {"chr1": "ACGT" * 300, "chr2": "GGCC" * 100})
    first = TokenCache.open(Genome(path), CharTokenizer())
    assert first.tokens("chr2", 0, 4).tolist() == [6, 6, 5, 5]
    st = path.stat()
    if change == "edit":
        _write(path, {"chr1": "ACGT" * 300, "chr2": "TTAA" * 100})
    elif change == "grow":
        _write(path, {"chr1": "ACGT" * 300, "chr2": "GGCC" * 100, "chr3": "TTTT"})
    elif change == "truncate":
        _write(path, {"chr1": "ACGT" * 300})
    else:                        # same size, same mtime: only the content check sees it
        _write(path, {"chr1": "ACGT" * 300, "chr2": "TTAA" * 100})
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size
    again = TokenCache.open(Genome(path), CharTokenizer())
    assert again.path != first.path
    assert _token_files(cache_dir) == [again.path.name]          # the old one is deleted
    expected = {"edit": [7, 7, 4, 4], "grow": [6, 6, 5, 5], "same_size_same_mtime": [7, 7, 4, 4]}
    if change == "truncate":
        assert again.names == ["chr1"]
    else:
        assert again.tokens("chr2", 0, 4).tolist() == expected[change]
    if change == "grow":
        assert again.tokens("chr3").tolist() == [7, 7, 7, 7]


def test_an_unchanged_file_reuses_its_cache(tmp_path, cache_dir):
    path = _write(tmp_path / "g.fa", {"chr1": "ACGT" * 300})
    first = TokenCache.open(Genome(path), CharTokenizer())
    mtime = first.path.stat().st_mtime_ns
    again = TokenCache.open(Genome(path), CharTokenizer())
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert meta["identity"]["size"] == path.stat().st_size
    assert cache_dir in first.path.parents and not list(tmp_path.glob("g.fa.*"))


def test_an_interrupted_encoding_leaves_no_cache(tmp_path, cache_dir, monkeypatch):
    path = _write(tmp_path / "g.fa", {"chr1": "ACGT" * 300, "chr2": "GGCC" * 100})
    genome = Genome(path)
    calls = []

    def fetch_then_die(name, start=0, end=None, strand="+"):
        calls.append(name)
        if name == "chr2":
            raise KeyboardInterrupt
        return Genome.fetch(genome, name, start, end, strand)
    monkeypatch.setattr(genome, "fetch", fetch_then_die)
    with pytest.raises(KeyboardInterrupt):
        TokenCache.open(genome, CharTokenizer())
    assert calls == ["chr1", "chr2"]
    left = sorted(p.name for p in (cache_dir / "tokens").iterdir())
    assert left == [], left                      # no half-written tokens, no JSON
    monkeypatch.undo()
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(cache_dir))
    assert TokenCache.open(Genome(path), CharTokenizer()).tokens("chr2", 0, 2).tolist() == [6, 6]


def test_bgzip_and_records_sources(tmp_path):
    records = _genome(seed=5, n_records=2, length=3000)
    plain = _write(tmp_path / "g.fa", records)
    bgz = tmp_path / "g.fa.gz"
    with bgzf.BgzfWriter(str(bgz), "wb") as out:
        out.write(plain.read_bytes())
    from_bgzip = TokenCache.open(Genome(bgz), CharTokenizer())
    from_records = TokenCache.open(Records(plain), CharTokenizer())
    for name, seq in records.items():
        expected = CharTokenizer().encode_numpy(seq)
        assert np.array_equal(from_bgzip.tokens(name), expected)
        assert np.array_equal(from_records.tokens(name), expected)


def _reference_batch(ds, step, seq_len, batch_size, rank=0):
    """GenomeWindows.get_batch as it was before the token cache (bases through the FASTA
    reader, encoded per window)."""
    rng = np.random.default_rng([ds.seed, step, rank])
    seqs = []
    for _ in range(batch_size):
        sampler, win, seq = ds.sampler.sample(rng, seq_len)
        ids = ds.tokenizer.encode(seq, source=f"{sampler.where}:{win.name}:{win.start}")
        if ds.rc_augment and rng.random() < 0.5:
            ids = ds.tokenizer.reverse_complement_ids(ids)
        seqs.append(ids)
    ids = torch.stack(seqs)
    if ds.objective == "mlm":
        inputs, labels = mlm_mask(ids, rng, ds.tokenizer)
        return {"input_ids": inputs, "labels": labels}
    return {"input_ids": ids}


@pytest.mark.parametrize("objective,max_n_frac,rc", [("clm", 0.1, True), ("mlm", 0.05, True),
                                                     ("clm", 1.0, False)])
def test_batches_are_the_same_as_before_the_cache(tmp_path, objective, max_n_frac, rc):
    one = Genome(_write(tmp_path / "a.fa", _genome(seed=7)))
    two = Genome(_write(tmp_path / "b.fa", _genome(seed=8, n_records=1, length=9000)))
    regions = [split_regions(one)["train"], split_regions(two, by="position")["train"]]
    for seed in (0, 5):
        ds = GenomeWindows([one, two], regions, objective=objective, rc_augment=rc,
                           max_n_frac=max_n_frac, seed=seed)
        for step, seq_len, batch in ((0, 64, 8), (3, 200, 4), (17, 1000, 3)):
            for rank in (0, 1):
                new = ds.get_batch(step, seq_len, batch, rank, 2)
                old = _reference_batch(ds, step, seq_len, batch, rank)
                assert new.keys() == old.keys()
                for key in new:
                    assert new[key].dtype == old[key].dtype == torch.long
                    assert torch.equal(new[key], old[key]), (seed, step, rank, key)


def test_batch_errors_are_the_same_as_before(tmp_path):
    genome = Genome(_write(tmp_path / "g.fa", {"chr1": "ACGTacgt" * 100}))
    ds = GenomeWindows(genome, [split_regions(genome)["train"][0]],
                       tokenizer=CharTokenizer(uppercase=False))
    with pytest.raises(ValueError, match=r"unknown base 'a' at position \d+ in .*g.fa:chr1:\d+"):
        ds.get_batch(0, 16, 2)
    ds = GenomeWindows(genome, split_regions(genome)["train"])
    with pytest.raises(ValueError, match="no region holds a window of 5000 bases"):
        ds.get_batch(0, 5000, 2)
    n_only = Genome(_write(tmp_path / "n.fa", {"chr1": "N" * 500}))
    ds = GenomeWindows(n_only, split_regions(n_only, by="position")["train"])
    with pytest.raises(ValueError, match="no window of 32 bases with at most 10% N"):
        ds.get_batch(0, 32, 2)


def test_cached_ids_slices_equal_the_encoded_stretch(tmp_path):
    records = _genome(seed=9, n_records=1, length=3000)
    cache = TokenCache.open(Genome(_write(tmp_path / "g.fa", records)), CharTokenizer())
    tok, seq = CharTokenizer(), records["chr1"]
    for strand, stretch in (("+", seq[100:2100]), ("-", Genome(tmp_path / "g.fa").fetch(
            "chr1", 100, 2100, "-"))):
        whole = tok.encode(stretch, add_bos=True)                         # (2001,)
        lazy = cache.ids("chr1", 100, 2100, strand, bos_id=tok.bos_id)
        assert len(lazy) == len(whole)
        for a, b in ((0, 1), (0, 700), (1, 5), (699, 1400), (1400, 5000), (2001, 2001)):
            assert torch.equal(lazy[a:b], whole[a:b]), (strand, a, b)


def test_eval_genome_reads_the_cache_and_scores_as_before(tmp_path, seeded_one_thread,
                                                          monkeypatch):
    _user_cache(monkeypatch)
    from mambaseq import core
    from mambaseq.core.model_folder import model_assets
    from mambaseq.mamba_bio.metrics import lm_metrics, lm_nll
    from mambaseq.pipelines.genome import EvalGenomeConfig, evaluate_genome

    records = _genome(seed=4, n_records=2, length=700)
    path = _write(tmp_path / "g.fa", records)
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t10\t600\tx\t0\t+\nchr2\t0\t1200\ty\t0\t-\n")
    model = core.MambaLM(core.MambaLMConfig(vocab_size=9, d_model=16, n_layer=1)).eval()
    model.save_pretrained(tmp_path / "model", extra_json=model_assets(CharTokenizer()))
    got = evaluate_genome(EvalGenomeConfig(model=str(tmp_path / "model"), fasta=[str(path)],
                                           bed=str(bed), chunk_len=128))
    genome, tok, total, count = Genome(path), CharTokenizer(), 0.0, 0
    with torch.no_grad():
        for name, lo, hi, strand in (("chr1", 10, 600, "+"), ("chr2", 0, 1200, "-")):
            ids = tok.encode(genome.fetch(name, lo, hi, strand), add_bos=True)  # the old way
            nll, n = lm_nll(model, ids, chunk_len=128)
            total, count = total + nll, count + n
    expected = lm_metrics(total, count)
    assert got["tokens"] == expected["tokens"]
    assert got["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
