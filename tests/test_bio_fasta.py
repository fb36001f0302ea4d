"""Loaders: indexed FASTA (plain, bgzip, gzip error), GenBank, BED, windows with N runs."""
import gzip

import pytest
from Bio import bgzf
from Bio.Seq import Seq
from Bio.SeqIO import write as seqio_write
from Bio.SeqRecord import SeqRecord

from mambaseq.mamba_bio.bed import read_bed
from mambaseq.mamba_bio.fasta import Genome, Records, Window, iter_windows, n_fraction, open_sequences
from mambaseq.mamba_bio.tokenizers import reverse_complement

CHR1 = "ACGTacgtNN" * 12          # 120 bases, soft-masked and N stretches
CHR2 = "GGGGCCCCAT" * 5 + "N" * 50
FASTA = f">chr1 first\n{CHR1[:60]}\n{CHR1[60:]}\n>chr2\n{CHR2[:60]}\n{CHR2[60:]}\n"


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(FASTA)
    return path


def test_indexed_fetch_keeps_case_and_strand(fasta, tmp_path):
    g = Genome(fasta, cache_dir=tmp_path / "cache")
    assert g.names == ["chr1", "chr2"] and g.lengths == {"chr1": 120, "chr2": 100}
    assert g.fetch("chr1", 55, 65) == CHR1[55:65]           # across a line break
    assert g.fetch("chr1", 0, 10, strand="-") == reverse_complement(CHR1[:10])
    assert g.fetch("chr2") == CHR2
    with pytest.raises(ValueError, match=r"chr1: interval \[100, 130\) outside"):
        g.fetch("chr1", 100, 130)
    with pytest.raises(KeyError, match="no record named 'chrX'"):
        g.fetch("chrX", 0, 1)


def test_bgzip_reads_like_plain(fasta, tmp_path):
    path = tmp_path / "g.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as f:
        f.write(FASTA.encode())
    g = Genome(path, cache_dir=tmp_path / "cache")
    assert g.fetch("chr1", 50, 70) == CHR1[50:70]
    assert g.fetch("chr2", 90, 100) == "N" * 10


def test_plain_gzip_error_says_how_to_bgzip(tmp_path):
    path = tmp_path / "g.fa.gz"
    path.write_bytes(gzip.compress(FASTA.encode()))
    with pytest.raises(ValueError, match=r"g\.fa\.gz is plain gzip.*bgzip"):
        Genome(path)
    g = Genome(path, decompress_gzip=True, cache_dir=tmp_path / "cache")
    assert g.fetch("chr1", 0, 20) == CHR1[:20]


def test_read_only_folder_gets_index_in_cache(fasta, tmp_path):
    folder = fasta.parent
    folder.chmod(0o555)
    try:
        g = Genome(fasta, cache_dir=tmp_path.parent / f"{tmp_path.name}_cache")
        assert g.fetch("chr1", 0, 4) == "ACGT"
        assert not (folder / "g.fa.fai").exists()
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("text,message", [
    ("", r"empty\.fa"),
    ("hello\nACGT\n", r"malformed FASTA .*bad\.fa"),
])
def test_empty_or_malformed_fasta_names_the_file(tmp_path, text, message):
    name = "empty.fa" if not text else "bad.fa"
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Genome(path)
    with pytest.raises(ValueError, match=message):
        Records(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        open_sequences(tmp_path / "nope.fa")
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory"):
        open_sequences(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b">x\n" + bytes(range(128, 256)) + b"\n", "not a text FASTA file"),
    (b">a\nACGT\n>a\nGGCC\n", "record name .a. appears more than once"),
    (b">a\n>b\n", "hold no bases"),
])
def test_bad_fasta_names_the_file(tmp_path, content, message):
    for name in ("bad.fa", "bad.fasta.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
        reader = Genome if not name.endswith(".gz") else Records
        with pytest.raises(ValueError, match=message) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_stale_index_is_blamed_not_the_data(tmp_path):
    """A file edited after indexing whose mtime is older than the .fai's."""
    import os
    path = tmp_path / "g.fa"
    path.write_text(">a\n" + "ACGT" * 50 + "\n")
    assert Genome(path).fetch("a", 0, 4) == "ACGT"
    stamp = path.stat().st_mtime
    path.write_text(">z\nTTTTTTTT\n>a\n" + "ACGT" * 50 + "\n")
    os.utime(path, (stamp - 100, stamp - 100))
    with pytest.raises(ValueError, match=r"g\.fa\.fai: stale index, record 'a' is not at byte 3"):
        Genome(path)


def test_multi_record_fasta_and_genbank(fasta, tmp_path):
    recs = Records(fasta)
    assert recs.names == ["chr1", "chr2"] and recs.fetch("chr1", 5, 9, "-") == \
        reverse_complement(CHR1[5:9])
    gb = tmp_path / "m.gb"
    seqio_write([SeqRecord(Seq("ACGTTGCA" * 4), id="rec1", name="rec1",
                           annotations={"molecule_type": "DNA"})], gb, "genbank")
    src = open_sequences(gb)
    assert isinstance(src, Records) and src.fetch("rec1", 0, 8) == "ACGTTGCA"


def test_n_fraction_and_windows_skip_n_runs(fasta, tmp_path):
    g = Genome(fasta, cache_dir=tmp_path / "cache")
    assert n_fraction("ACNN") == 0.5 and n_fraction("acgt") == 0.0
    windows = list(iter_windows(g, window=20, max_n_frac=0.2, regions=[Window("chr2", 0, 100)]))
    # chr2 is 50 bases of sequence then 50 N: only the windows in the first half survive.
    assert [w.start for w, _ in windows] == [0, 20]
    both = list(iter_windows(g, window=10, stride=10, strands="both",
                             regions=[Window("chr1", 0, 20)]))
    assert [(w.start, w.strand) for w, _ in both] == [(0, "+"), (0, "-"), (10, "+"), (10, "-")]
    assert both[1][1] == reverse_complement(both[0][1])


def test_bed_reads_and_names_bad_lines(tmp_path):
    bed = tmp_path / "a.bed"
    bed.write_text("track name=x\n# comment\nchr1\t10\t50\tpeak1\t0\t-\nchr2 0 30\n")
    assert read_bed(bed) == [Window("chr1", 10, 50, "-"), Window("chr2", 0, 30, "+")]
    cases = {
        "chr1\t10\n": r"a\.bed:1: a BED line needs at least 3 columns",
        "chr1\t10\t5\n": r"a\.bed:1: need 0 <= start < end",
        "chr1\t1\tx\n": r"a\.bed:1: start and end must be integers",
        "chr1\t1\t5\tn\t0\t*\n": r"a\.bed:1: strand",
        "\nchr9\t1\t5\n": r"a\.bed:2: chromosome 'chr9' is not in the FASTA",
        "chr1\t1\t500\n": r"a\.bed:1: end 500 is past the end of chr1",
    }
    for text, message in cases.items():
        bed.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_bed(bed, lengths={"chr1": 120})
    bed.write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty BED"):
        read_bed(bed)
