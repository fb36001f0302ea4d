"""A small evolutionary simulator: genomes for a quick start with no downloads, and a
species task whose answer is known.

A root genome is drawn from an order-k Markov chain over A C G T; it evolves down a
Newick tree: along a branch of length t (expected substitutions per site) every site
changes according to P(t) = expm(Q t) of a time-reversible rate matrix Q (HKY85 or GTR,
normalised to one substitution per unit time at equilibrium), and, when asked, indels
hit the sequence as Poisson events with geometric lengths.

    python -m mambaseq.mamba_bio.simulate --out data/sim          # 5 species, FASTA per species
"""
from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
from Bio import Phylo
from scipy.linalg import expm

BASES = np.array(list("ACGT"))
# Default tree (Newick, branch lengths in substitutions per site): two clades with a known
# closest pair (ape_a, ape_b).
DEFAULT_TREE = ("((ape_a:0.02,ape_b:0.03):0.05,ape_c:0.08,"
                "((mouse:0.06,rat:0.07):0.05,cow:0.11):0.04);")


def hky_rate_matrix(pi=(0.25, 0.25, 0.25, 0.25), kappa: float = 2.0) -> np.ndarray:
    """HKY85 rate matrix Q (4, 4) over A C G T: transitions (A<->G, C<->T) at kappa times
    the transversion rate, target base weighted by pi; scaled to one substitution per
    unit time (Hasegawa, Kishino & Yano 1985)."""
    # GTR exchangeabilities in order AC AG AT CG CT GT: HKY sets transitions AG, CT to kappa.
    return gtr_rate_matrix(pi, rates=(1.0, kappa, 1.0, 1.0, kappa, 1.0))


def gtr_rate_matrix(pi=(0.25, 0.25, 0.25, 0.25),
                    rates=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """GTR rate matrix Q (4, 4): Q_ij = r_ij pi_j for i != j, rows sum to 0, with
    exchangeabilities ``rates`` in the order AC AG AT CG CT GT (Tavare 1986), scaled so that
    the expected rate -sum_i pi_i Q_ii is 1."""
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape != (4,) or (pi <= 0).any() or not np.isclose(pi.sum(), 1.0):
        raise ValueError(f"pi must be 4 positive frequencies summing to 1, got {pi.tolist()}")
    r = np.zeros((4, 4))
    r[np.triu_indices(4, 1)] = rates
    r = r + r.T
    q = r * pi[None, :]
    np.fill_diagonal(q, -q.sum(1))
    return q / -(pi * np.diag(q)).sum()


def transition_matrix(q: np.ndarray, t: float) -> np.ndarray:
    """P(t) = expm(Q t), (4, 4); row i is the distribution of the base that i becomes."""
    return expm(q * t)


def markov_root(length: int, rng: np.random.Generator, order: int = 2,
                concentration: float = 1.0) -> np.ndarray:
    """A root genome (length,) of base indices 0..3 from an order-``order`` Markov chain
    whose transition rows are drawn from Dirichlet(concentration): context that a
    sequence model can learn and a k-mer model partly can."""
    n_ctx = 4 ** order
    table = np.cumsum(rng.dirichlet(np.full(4, concentration), size=n_ctx), axis=1)  # (4^k, 4)
    seq = np.empty(length, dtype=np.int8)
    seq[:order] = rng.integers(0, 4, size=order)
    u = rng.random(length)
    ctx = int(sum(int(b) * 4 ** (order - 1 - i) for i, b in enumerate(seq[:order])))
    for i in range(order, length):
        b = int(np.searchsorted(table[ctx], u[i] * table[ctx, -1]))
        seq[i] = b
        ctx = (ctx * 4 + b) % n_ctx
    return seq


def evolve(seq: np.ndarray, t: float, q: np.ndarray, rng: np.random.Generator,
           pi=(0.25, 0.25, 0.25, 0.25), indel_rate: float = 0.0,
           mean_indel_len: float = 3.0) -> np.ndarray:
    """Evolve a sequence (L,) of base indices along a branch of length ``t``.

    Substitutions: each site independently draws its new base from row ``seq[i]`` of P(t).
    Indels (``indel_rate`` events per site per unit branch length, half insertions of
    bases drawn from ``pi``, half deletions; lengths geometric with mean
    ``mean_indel_len``) are applied after the substitutions.
    """
    cum = np.cumsum(transition_matrix(q, t), axis=1)                      # (4, 4)
    u = rng.random(len(seq))[:, None]
    out = (u > cum[seq]).sum(1).clip(max=3).astype(np.int8)               # (L,)
    if indel_rate <= 0:
        return out
    for _ in range(rng.poisson(indel_rate * t * len(out))):
        size = rng.geometric(1.0 / mean_indel_len)
        pos = int(rng.integers(0, len(out) + 1))
        if rng.random() < 0.5:
            insert = rng.choice(4, size=size, p=np.asarray(pi)).astype(np.int8)
            out = np.concatenate([out[:pos], insert, out[pos:]])
        else:
            out = np.concatenate([out[:pos], out[pos + size:]])
    return out


def simulate_genomes(tree: str = DEFAULT_TREE, length: int = 20_000, n_chromosomes: int = 1,
                     model: str = "hky", kappa: float = 2.0, pi=(0.3, 0.2, 0.2, 0.3),
                     gtr_rates=(1.0, 2.0, 1.0, 1.0, 2.0, 1.0), markov_order: int = 2,
                     indel_rate: float = 0.0, composition_sd: float = 0.0,
                     repeat_fraction: float = 0.0, repeat_length: int = 300,
                     repeat_divergence: float = 0.1,
                     seed: int = 0) -> dict[str, list[str]]:
    """Simulate the genomes of the leaves of ``tree``.

    Args:
        tree (str): Newick with branch lengths (substitutions per site) and leaf names.
        length (int, 20000): bases per root chromosome.
        n_chromosomes (int, 1): independent chromosomes per genome (chr1, chr2, ...).
        model ("hky" or "gtr"): substitution model; HKY uses ``kappa``, GTR ``gtr_rates``.
        pi: equilibrium base frequencies (A, C, G, T).
        markov_order (int, 2): order of the Markov chain of the root genome.
        indel_rate (float, 0): indel events per site per unit branch length.
        composition_sd (float, 0): with > 0 every branch has its own base frequencies,
            pi_child ~ pi_parent * exp(composition_sd * sqrt(t) * N(0, 1)) (renormalised),
            shared by all chromosomes: a genome-wide, lineage-specific composition (a
            non-homogeneous model), so that species can be told apart in regions never
            seen in training. With 0 the species differ only by where substitutions fell,
            which no classifier can learn from held-out regions.
        repeat_fraction (float, 0): with > 0 every branch gets a repeat family (a random
            consensus of ``repeat_length`` bases, like a transposable element family born
            on that branch), and copies of the families on a leaf's lineage, each
            ``repeat_divergence`` diverged from its consensus, are inserted at random
            places until they make up about this share of every chromosome. Families of
            an ancestral branch are shared by its clade, a leaf's own family is its own:
            a species signal longer than any short k-mer, as in real genomes (Alu, LINEs).
        seed (int, 0): the whole simulation is a function of it.

    Returns:
        dict leaf name -> list of chromosome sequences (uppercase str).

    >>> genomes = simulate_genomes(length=5000)
    >>> sorted(genomes)
    ['ape_a', 'ape_b', 'ape_c', 'cow', 'mouse', 'rat']
    >>> [len(chrom) for chrom in genomes["cow"]], sorted(set(genomes["cow"][0]))  # no indels
    ([5000], ['A', 'C', 'G', 'T'])
    """
    if model not in ("hky", "gtr"):
        raise ValueError(f"model must be 'hky' or 'gtr', got {model!r}")
    root = Phylo.read(StringIO(tree), "newick").root
    leaves = [c.name for c in root.get_terminals()]
    if any(not name for name in leaves) or len(set(leaves)) != len(leaves):
        raise ValueError(f"every leaf of the tree needs a unique name: {tree}")
    rng = np.random.default_rng(seed)

    def rate_matrix(freqs):
        if model == "hky":
            return hky_rate_matrix(freqs, kappa)
        return gtr_rate_matrix(freqs, gtr_rates)

    # Per-branch (frequencies, Q), drawn once so that all chromosomes share them.
    branch = {}
    stack = [(root, np.asarray(pi, dtype=np.float64))]
    while stack:
        clade, freqs = stack.pop()
        for child in clade.clades:
            t = child.branch_length or 0.0
            f = freqs * np.exp(composition_sd * np.sqrt(t) * rng.standard_normal(4))
            f = f / f.sum()
            branch[id(child)] = (f, rate_matrix(f))
            stack.append((child, f))
    # Repeat families: one per branch, active in every leaf below it.
    families = {name: [] for name in leaves}
    if repeat_fraction > 0:
        stack = [(root, [])]
        while stack:
            clade, inherited = stack.pop()
            if clade.is_terminal():
                families[clade.name] = inherited
            for child in clade.clades:
                stack.append((child, inherited + [rng.integers(0, 4, repeat_length,
                                                               dtype=np.int8)]))
    genomes = {name: [] for name in leaves}
    for _ in range(n_chromosomes):
        stack = [(root, markov_root(length, rng, order=markov_order))]
        while stack:
            clade, seq = stack.pop()
            if clade.is_terminal():
                if families[clade.name]:
                    seq = insert_repeats(seq, families[clade.name], repeat_fraction,
                                         repeat_divergence, rng)
                genomes[clade.name].append("".join(BASES[seq]))
            for child in clade.clades:
                freqs, q = branch[id(child)]
                stack.append((child, evolve(seq, child.branch_length or 0.0, q, rng,
                                            pi=freqs, indel_rate=indel_rate)))
    return genomes


def insert_repeats(seq: np.ndarray, families: list[np.ndarray], fraction: float,
                   divergence: float, rng: np.random.Generator) -> np.ndarray:
    """Insert copies of ``families`` (consensus arrays of base indices) into ``seq`` (L,) at
    random places, a family drawn uniformly per copy, each base of a copy replaced by a
    random base with probability ``divergence``, until the copies are about ``fraction`` of
    the result."""
    size = len(families[0])
    n_copies = int(round(fraction * len(seq) / ((1 - fraction) * size)))
    places = np.sort(rng.integers(0, len(seq) + 1, n_copies))
    pieces, last = [], 0
    for place in places:
        copy = families[int(rng.integers(len(families)))].copy()
        hit = rng.random(size) < divergence
        copy[hit] = rng.integers(0, 4, int(hit.sum()), dtype=np.int8)
        pieces += [seq[last:place], copy]
        last = place
    return np.concatenate(pieces + [seq[last:]])


def write_fasta(path, records: dict[str, str], line_width: int = 60) -> Path:
    """Write {name: sequence} as FASTA with lines of ``line_width`` bases (pyfaidx needs
    equal line lengths within a record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), line_width):
                f.write(seq[i:i + line_width] + "\n")
    return path


def write_species_fastas(out_dir, genomes: dict[str, list[str]]) -> dict[str, Path]:
    """One FASTA per species (records chr1..chrK) in ``out_dir``; returns name -> path."""
    return {name: write_fasta(Path(out_dir) / f"{name}.fa",
                              {f"chr{i + 1}": s for i, s in enumerate(chroms)})
            for name, chroms in genomes.items()}


if __name__ == "__main__":
    # ``python -m mambaseq.mamba_bio.simulate ...`` is the command ``mambaseq simulate-genomes``
    # (the command line lives in pipelines.cli; this layer has none of its own)
    import sys

    from mambaseq.pipelines.cli import main

    sys.exit(main(["simulate-genomes", *sys.argv[1:]]))
