"""Tile embeddings: the tiles' coordinates, vectors equal to embedding each tile alone, both
strands averaged giving a strand-independent vector, and the embed job's tile outputs."""
import numpy as np
import pytest
import torch

from mambaseq import core
from mambaseq.mamba_bio.embeddings import (TileEmbeddings, embed_record, embed_tiles,
                                           records_from_tiles, tile_spans)
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.simulate import write_fasta
from mambaseq.mamba_bio.heads import MaskedLM, MaskedLMConfig
from mambaseq.mamba_bio.tokenizers import CharTokenizer, reverse_complement
from mambaseq.pipelines import EmbedConfig, embed
from mambaseq.pipelines.cli import main
from mambaseq.pipelines.training import out_folder

TOK = CharTokenizer()


def random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


@pytest.fixture()
def fasta(tmp_path):
    # 230 bases, 35 bases (shorter than a tile), 120 bases of which 0-60 are all N
    return write_fasta(tmp_path / "g.fa", {"a": random_dna(230, 1), "b": random_dna(35, 2),
                                           "c": "N" * 60 + random_dna(60, 3)})


def models():
    torch.manual_seed(0)
    size = dict(vocab_size=TOK.vocab_size, d_model=16, n_layer=1)
    return {"causal": core.MambaLM(core.MambaLMConfig(**size)).eval(),
            "bidirectional": MaskedLM(MaskedLMConfig(**size)).eval()}


def test_tiles_cover_every_record_with_the_last_tile_aligned_to_its_end(fasta):
    source = open_sequences(fasta)
    for window, stride in [(50, 50), (50, 30), (64, 64)]:
        spans = list(tile_spans(source, window, stride))
        for name, length in source.lengths.items():
            mine = [(s, e) for n, s, e in spans if n == name]
            covered = np.zeros(length, bool)
            for s, e in mine:
                covered[s:e] = True
                assert e - s == min(window, length)             # whole tiles only
            assert covered.all() and mine[-1][1] == length
            # tiles start every stride bases, then one more ends at the record's end
            starts = [s for s, _ in mine]
            regular = list(range(0, max(length - window, 0) + 1, stride))
            assert starts[:len(regular)] == regular
            assert starts[len(regular):] in ([], [length - window])
    assert list(tile_spans(source, 100, regions=[("a", 10, 230)])) == [
        ("a", 10, 110), ("a", 110, 210), ("a", 130, 230)]


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_tile_vectors_equal_embedding_each_tile_alone(fasta, kind, pooling):
    model = models()[kind]
    if pooling == "last" and kind == "bidirectional":
        with pytest.raises(ValueError, match="pooling 'last' needs a causal model"):
            embed_tiles(model, TOK, fasta, 50, pooling=pooling)
        return
    # 4 tiles per batch: batches mix tiles of several records; "b" (35 bases) has its own
    vectors, tiles = embed_tiles(model, TOK, fasta, 50, 40, pooling=pooling, batch_tokens=200)
    assert vectors.shape == (len(tiles), 16) and vectors.dtype == np.float32
    assert "c" in tiles.record and not ((tiles.record == "c") & (tiles.start < 10)).any()
    source = open_sequences(fasta)
    for v, name, start, end in zip(vectors, *tiles):
        alone = embed_record(model, TOK.encode(source.fetch(name, start, end)), pooling=pooling)
        np.testing.assert_allclose(v, alone, atol=1e-5)
    # a record's vector: the tile-length weighted mean of its tiles
    rec = records_from_tiles(TileEmbeddings(vectors, tiles), ["a", "b"], pooling)
    weights = tiles.end[tiles.record == "a"] - tiles.start[tiles.record == "a"]
    if pooling == "mean":
        np.testing.assert_allclose(rec[0], weights @ vectors[tiles.record == "a"] /
                                   weights.sum(), atol=1e-6)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_both_strands_gives_a_tile_and_its_reverse_complement_the_same_vector(tmp_path, kind):
    model = models()[kind]
    seq = random_dna(100, 7)
    fa = write_fasta(tmp_path / "s.fa", {"fwd": seq, "rev": reverse_complement(seq)})
    plain, _ = embed_tiles(model, TOK, fa, 100)
    assert not np.allclose(plain[0], plain[1], atol=1e-4)       # the model is strand-specific
    both, _ = embed_tiles(model, TOK, fa, 100, both_strands=True)
    np.testing.assert_allclose(both[0], both[1], atol=1e-5)
    np.testing.assert_allclose(both[0], (plain[0] + plain[1]) / 2, atol=1e-5)


def test_embed_job_writes_tile_vectors_and_a_bed_in_the_same_order(tmp_path, fasta, capsys):
    model_dir = tmp_path / "lm"
    models()["causal"].save_pretrained(model_dir, extra_json=core.model_assets(TOK))
    out = tmp_path / "e.npz"
    config = EmbedConfig(model=str(model_dir), fasta=str(fasta), out=str(out), window=50,
                         stride=50, both_strands=True)
    result = embed(config)
    z = np.load(out)
    assert result.tiles_bed == tmp_path / "e.tiles.bed" and result.tiles == len(z["tile_start"])
    assert list(z["names"]) == ["a", "b", "c"] and z["embeddings"].shape == (3, 16)
    bed = result.tiles_bed.read_text().splitlines()
    assert bed[0].startswith("#") and len(bed) - 1 == len(z["tile_vectors"])
    assert bed[1:] == [f"{r}\t{s}\t{e}\ttile{i}" for i, (r, s, e) in
                       enumerate(zip(z["tile_record"], z["tile_start"], z["tile_end"]))]
    direct, tiles = embed_tiles(models()["causal"], TOK, fasta, 50, both_strands=True)
    np.testing.assert_allclose(z["tile_vectors"], direct, atol=1e-6)
    embed(config)                                          # replaces its own outputs
    # the command line; a BED file embed did not write is refused, untouched
    foreign = tmp_path / "x.tiles.bed"
    foreign.write_text("chr1\t0\t10\n")
    with pytest.raises(out_folder.OutRefused, match="x.tiles.bed exists and is not a file"):
        embed(EmbedConfig(model=str(model_dir), fasta=str(fasta), out=str(tmp_path / "x.npz"),
                          window=50))
    assert foreign.read_text() == "chr1\t0\t10\n" and not (tmp_path / "x.npz").exists()
    assert main(["embed", "--model", str(model_dir), "--fasta", str(fasta), "--out",
                 str(tmp_path / "m.npz"), "--window", "64", "--pooling", "max"]) == 0
    assert "tile embeddings -> " in capsys.readouterr().out
    with pytest.raises(ValueError, match="window \\(tiles\\) needs an .npz out"):
        EmbedConfig(model="m", fasta="f.fa", out="e.npy", window=10)
    with pytest.raises(ValueError, match="stride and both_strands are options of tiles"):
        EmbedConfig(model="m", fasta="f.fa", out="e.npz", stride=10)
