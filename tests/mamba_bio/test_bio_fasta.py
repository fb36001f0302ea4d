"""Loaders: indexed FASTA (plain, bgzip, gzip error), GenBank, BED, windows with N runs."""
import gzip
import os
import shutil
import time

import pyfaidx
import pytest
from Bio import SeqIO, bgzf
from Bio.Seq import Seq
from Bio.SeqIO import write as seqio_write
from Bio.SeqRecord import SeqRecord

from mambaseq.mamba_bio.bed import read_bed
from mambaseq.mamba_bio.fasta import (CACHE_MAX_AGE_DAYS, Genome, Records, Window, iter_windows,
                                      n_fraction, open_sequences)
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


def _bio(path):
    """Biopython's reading of a FASTA: the reference every indexed read must equal."""
    return {r.id: str(r.seq) for r in SeqIO.parse(str(path), "fasta")}


def _genome_text(g):
    return {name: g.fetch(name) for name in g.names}


def _make_index_newer(*paths):
    later = max(p.stat().st_mtime for p in paths) + 100
    for p in paths:
        os.utime(p, (later, later))


@pytest.mark.parametrize("text", [
    ">a\nACGTACGT\nACG",                            # short last line, no final newline
    ">a desc\nACGTACGT\nACGTACGT",                  # full last line, no final newline
    ">a\r\nACGTACGT\r\nAC\r\n>b\r\nTTTT",           # CRLF, no final line end
    ">a\nACGT\n>empty\n>c\nGG\n\n>d\nT",             # empty record, blank line, no newline
    ">a\nACGT\n>last",                              # empty last record, header at the end
])
def test_no_final_newline_reads_all_bases_like_biopython(tmp_path, text):
    path = tmp_path / "g.fa"
    path.write_bytes(text.encode())
    assert _genome_text(Genome(path, cache_dir=tmp_path / "cache")) == _bio(path)
    bgz = tmp_path / "g.fa.gz"
    with bgzf.BgzfWriter(str(bgz), "wb") as f:
        f.write(text.encode())
    assert _genome_text(Genome(bgz, cache_dir=tmp_path / "cache")) == _bio(path)


def test_real_mitogenomes_without_final_newline_read_whole(shared_data, tmp_path):
    files = sorted((shared_data / "dna" / "mito").glob("*.fa"))
    if not files:
        pytest.skip(f"no FASTA files in {shared_data / 'dna' / 'mito'}")
    lacking = [f for f in files if not f.read_bytes().endswith(b"\n")]
    assert lacking, "the mitogenomes were expected to include files without a final newline"
    for src in lacking:
        copy = tmp_path / src.name
        shutil.copyfile(src, copy)
        g = open_sequences(copy, cache_dir=tmp_path / "cache")
        assert _genome_text(g) == _bio(copy), src.name


def test_index_goes_to_the_cache_named_by_mambaseq_cache_dir(fasta, tmp_path, monkeypatch):
    """Nothing is written beside the data; the cache folder follows $MAMBASEQ_CACHE_DIR."""
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "envcache"))
    assert Genome(fasta).fetch("chr1", 0, 4) == "ACGT"
    assert sorted(p.name for p in fasta.parent.iterdir()) == ["envcache", "g.fa"]
    folder = tmp_path / "envcache" / "fai"
    assert len(list(folder.glob("*_g.fa.fai"))) == 1
    # a new index prunes the cache of the indices unused for CACHE_MAX_AGE_DAYS
    unused, recent = folder / "0123456789abcdef_01234567_gone.fa.fai", folder / "1_2_x.fa.fai"
    unused.write_text("x")
    recent.write_text("x")
    days_ago = time.time() - (CACHE_MAX_AGE_DAYS + 1) * 86400
    os.utime(unused, (days_ago, days_ago))
    fasta.write_text(FASTA + ">chr3\nACGT\n")
    assert Genome(fasta).names == ["chr1", "chr2", "chr3"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith("_g.fa.fai")) == \
        [recent.name] and len(list(folder.iterdir())) == 2


@pytest.mark.parametrize("change", ["grown", "new record", "shrunk"])
def test_changed_file_under_a_newer_index_is_read_whole(tmp_path, change):
    """The file changed after it was indexed and the index was touched newer: the toolkit's
    own index is rebuilt, one per file."""
    path, cache = tmp_path / "g.fa", tmp_path / "cache"
    path.write_text(">a\n" + "ACGT" * 30 + "\n")
    assert Genome(path, cache_dir=cache).lengths == {"a": 120}
    new = {"grown": ">a\n" + "ACGT" * 40 + "\n", "new record": ">a\n" + "ACGT" * 30 + "\n>b\nGG\n",
           "shrunk": ">a\n" + "ACGT" * 20 + "\n"}[change]
    path.write_text(new)
    _make_index_newer(path, *cache.rglob("*.fai"))
    g = Genome(path, cache_dir=cache)
    assert _genome_text(g) == _bio(path)
    assert len(list(cache.rglob("*.fai"))) == 1


def test_stale_cache_index_with_the_same_date_and_size_is_rebuilt(tmp_path):
    """An edit that keeps the size, and a date put back: the index is checked, not trusted."""
    path, cache = tmp_path / "g.fa", tmp_path / "cache"
    path.write_text(">a\nACGTACGT\n>b\nGG\n")
    Genome(path, cache_dir=cache)
    stamp = path.stat().st_mtime_ns
    path.write_text(">ab\nACGTACG\n>b\nGG\n")
    os.utime(path, ns=(stamp, stamp))
    assert _genome_text(Genome(path, cache_dir=cache)) == {"ab": "ACGTACG", "b": "GG"}


@pytest.mark.parametrize("change", ["grown", "shrunk", "moved", "other file"])
def test_users_stale_index_is_refused_and_left_alone(tmp_path, change):
    """An index beside the file (e.g. from samtools) that does not describe it: refused,
    naming it and the fix, never rewritten; the old code read such a file truncated."""
    path = tmp_path / "g.fa"
    path.write_text(">a\n" + "ACGT" * 30 + "\n")
    pyfaidx.Faidx(str(path)).close()              # the user's own index: g.fa.fai
    fai = tmp_path / "g.fa.fai"
    if change == "other file":
        other = tmp_path / "o.fa"
        other.write_text(">chrZ\n" + "ACGT" * 30 + "\n")
        pyfaidx.Faidx(str(other)).close()
        shutil.copyfile(tmp_path / "o.fa.fai", fai)
    else:
        path.write_text({"grown": ">a\n" + "ACGT" * 31 + "\n",
                         "shrunk": ">a\n" + "ACGT" * 29 + "\n",
                         "moved": ">z\nTTTT\n>a\n" + "ACGT" * 30 + "\n"}[change])
    _make_index_newer(path, fai)
    before = fai.read_bytes()
    with pytest.raises(ValueError, match=r"g\.fa\.fai: this index does not match .*g\.fa .*"
                                         r"delete it, or rebuild it with `samtools faidx"):
        Genome(path, cache_dir=tmp_path / "cache")
    assert fai.read_bytes() == before and not (tmp_path / "cache").exists()


def test_users_matching_index_is_used_whatever_its_date(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(">a\nACGTACGT\nAC\n")
    pyfaidx.Faidx(str(path)).close()
    fai = tmp_path / "g.fa.fai"
    os.utime(fai, (1, 1))                           # older than the FASTA: still right
    before = fai.read_bytes()
    assert Genome(path, cache_dir=tmp_path / "cache").fetch("a") == "ACGTACGTAC"
    assert fai.read_bytes() == before and fai.stat().st_mtime == 1
    assert not (tmp_path / "cache").exists()


def test_stale_bgzip_gzi_is_refused(tmp_path):
    """Same bases recompressed into other blocks, with the user's .fai/.gzi touched newer."""
    path, text = tmp_path / "g.fa.gz", ">a\n" + ("ACGTTGCA" * 8 + "\n") * 40
    with bgzf.BgzfWriter(str(path), "wb") as f:
        f.write(text.encode())
    pyfaidx.Faidx(str(path)).close()                # writes g.fa.gz.fai and g.fa.gz.gzi
    with bgzf.BgzfWriter(str(path), "wb") as f:
        for i in range(0, len(text), 700):
            f.write(text[i:i + 700].encode())
            f.flush()                               # one block per 700 bases
    gzi = tmp_path / "g.fa.gz.gzi"
    _make_index_newer(path, gzi, tmp_path / "g.fa.gz.fai")
    with pytest.raises(ValueError, match=r"g\.fa\.gz\.fai: this index does not match .*g\.fa"
                                         r"\.gz\.gzi does not list the file's compressed blocks"):
        Genome(path, cache_dir=tmp_path / "cache")
    gzi.unlink()                                    # incomplete: the cache is used instead
    assert Genome(path, cache_dir=tmp_path / "cache").fetch("a") == text[3:].replace("\n", "")


def test_decompressed_gzip_keeps_one_copy_per_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(cache))
    path = tmp_path / "g.fa.gz"
    path.write_bytes(gzip.compress(FASTA.encode()))
    for i in range(3):
        os.utime(path, (1000 + i, 1000 + i))        # touched: a new version each time
        assert Genome(path, decompress_gzip=True).fetch("chr1", 0, 4) == "ACGT"
    path.write_bytes(gzip.compress(b">x\nTTTT\n"))
    assert Genome(path, decompress_gzip=True).names == ["x"]
    copies = sorted(p.name for p in (cache / "decompressed").iterdir())
    assert len(copies) == 2 and copies[0].endswith("_g.fa.gz.fa")
    assert copies[1] == copies[0] + ".fai"          # its index, and nothing else


def test_damaged_gzip_and_unwritable_cache_name_the_file(tmp_path):
    path = tmp_path / "g.fa.gz"
    path.write_bytes(gzip.compress(FASTA.encode())[:-30])
    with pytest.raises(ValueError, match=r"g\.fa\.gz: damaged gzip file"):
        Records(path)
    with pytest.raises(ValueError, match=r"g\.fa\.gz: damaged gzip file"):
        Genome(path, decompress_gzip=True, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == ["decompressed"]  # no half copy
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"cannot write to the cache folder .*afile.*"
                                              r"MAMBASEQ_CACHE_DIR"):
        Genome(tmp_path / "g.fa.gz", decompress_gzip=True, cache_dir=blocker)


def test_uneven_lines_pyfaidx_accepts_are_refused(tmp_path):
    """pyfaidx indexes a last line longer than the others when a blank line follows, then
    reads some stretches of that record wrong; the index check names the record."""
    path = tmp_path / "g.fa"
    path.write_text(">a\nACGT\nACGTAAAAC\n\n>b\nA\n")
    with pytest.raises(ValueError, match=r"malformed FASTA .*g\.fa: record 'a' at byte 3: its "
                                         r"lines are not 4 bases each"):
        Genome(path, cache_dir=tmp_path / "cache")


def test_cut_genbank_file_is_refused(tmp_path):
    """Biopython only warns on a GenBank file cut inside its sequence, and returns what it
    read."""
    gb = tmp_path / "m.gb"
    seqio_write([SeqRecord(Seq("ACGTTGCA" * 4), id="rec1", name="rec1",
                           annotations={"molecule_type": "DNA"})], gb, "genbank")
    gb.write_text(gb.read_text()[:-30])
    with pytest.raises(ValueError, match=r"malformed genbank file .*m\.gb: Premature end"):
        Records(gb)


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
