"""Nucleotide tokenizers: round trip, reverse complement, IUPAC, strict errors, padding."""
import random

import pytest
import torch

from mambaseq.mamba_bio.tokenizers import (CharTokenizer, KmerTokenizer, reverse_complement,
                                  reverse_complement_ids)


def random_dna(n, seed, alphabet="ACGT"):
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_round_trip_and_fixed_ids():
    tok = CharTokenizer()
    seq = random_dna(500, 0, "ACGTN")
    assert tok.decode(tok.encode(seq)) == seq
    assert tok.encode("ACGTN").tolist() == [4, 5, 6, 7, 8]
    assert tok.encode("AC", add_bos=True, add_eos=True).tolist() == [2, 4, 5, 3]
    assert tok.vocab_size == 9


def test_lowercase_folds_and_soft_mask_flags_it():
    tok = CharTokenizer()
    assert tok.encode("acgtn").tolist() == tok.encode("ACGTN").tolist()
    assert tok.soft_mask("ACgtN").tolist() == [False, False, True, True, False]
    with pytest.raises(ValueError, match=r"unknown base 'a' at position 1"):
        CharTokenizer(uppercase=False).encode("Aa")


def test_iupac_maps_to_n_unless_strict():
    assert CharTokenizer().decode(CharTokenizer().encode("ARYSWKMBDHVn")) == "AN" + "N" * 10
    with pytest.raises(ValueError, match=r"unknown base 'R' at position 3 in x.fa:chr1"):
        CharTokenizer(strict=True).encode("ACGRT", source="x.fa:chr1")


@pytest.mark.parametrize("bad,pos", [("ACG-T", 3), ("X", 0), ("ACGTé", 4), ("AC GT", 2)])
def test_non_iupac_characters_always_raise(bad, pos):
    with pytest.raises(ValueError, match=rf"unknown base .* at position {pos}\b"):
        CharTokenizer().encode(bad)


def test_reverse_complement_string():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("acgR") == "Ycgt"
    seq = random_dna(300, 1, "ACGTNRYSWKMBDHVacgt")
    assert reverse_complement(reverse_complement(seq)) == seq


def test_complement_map_is_an_involution_matching_strings():
    tok = CharTokenizer()
    cmap = tok.complement_map
    assert torch.equal(cmap[cmap], torch.arange(tok.vocab_size))
    seq = random_dna(200, 2, "ACGTN")
    assert torch.equal(tok.reverse_complement_ids(tok.encode(seq)),
                       tok.encode(reverse_complement(seq)))
    assert cmap[tok.pad_id] == tok.pad_id and cmap[tok.mask_id] == tok.mask_id


def test_batch_padding_mask_and_rc_within_length():
    tok = CharTokenizer()
    seqs = ["ACGTT", "GGA", "T"]
    batch = tok.batch_encode(seqs, pad_to_multiple_of=4)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (3, 8) and mask.sum(1).tolist() == [5, 3, 1]
    assert (ids[~mask] == tok.pad_id).all()
    rc = reverse_complement_ids(ids, tok.complement_map, mask)
    for row, s in zip(rc, seqs):            # batched RC == per-sequence RC, padding kept
        assert tok.decode(row[:len(s)]) == reverse_complement(s)
        assert (row[len(s):] == tok.pad_id).all()
    assert torch.equal(reverse_complement_ids(rc, tok.complement_map, mask), ids)


def test_kmer_tokenizer():
    tok = KmerTokenizer(k=3)
    ids = tok.encode("ACGTTTNAA")
    assert tok.decode(ids) == "ACG TTT [NKMER]"
    assert tok.vocab_size == 5 + 64
    overlapping = KmerTokenizer(k=2, stride=1)
    assert len(overlapping.encode("ACGTA")) == 4
    counts = overlapping.counts("AAAN")
    assert counts.sum() == 2 and counts[0] == 2       # AA twice; AN not counted
    assert len(tok.encode("AC")) == 0
    with pytest.raises(ValueError, match="k must be"):
        KmerTokenizer(0)
