"""Genome language models as jobs: pretrain one on FASTA files, evaluate one on others.

    from mambaseq.pipelines import PretrainGenomeConfig, pretrain_genome
    result = pretrain_genome(PretrainGenomeConfig(fasta=["chr20.fa"], out="runs/chr20",
                                                  steps=2000, seq_len=1024))
    result.model_dir, result.report["val"]

Pretraining: training windows come from the train split, the validation loss from the
disjoint val split (by chromosome when there are several, else the last ``val_fraction`` of
each record); several FASTA files are each split so and pooled. The regions go to
``<out>/split.bed`` (a ``split_bed`` for another run); a resumed run refuses inputs that now
give other regions. For clm the validation is the whole val split read in one causal pass,
so ``val_loss`` is the exact per-base NLL there; the report adds the perplexity of the best
order-k Markov model fit on the train split, the baseline to beat.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm.auto import tqdm

from mambaseq import core
from mambaseq.core.model_folder import model_assets
from mambaseq.mamba_bio.bed import SplitRegion, read_bed, read_split_bed, write_split_bed
from mambaseq.mamba_bio.datasets import GenomeWindows
from mambaseq.mamba_bio.fasta import Window, open_sequences
from mambaseq.mamba_bio.heads import MaskedLM, MaskedLMConfig
from mambaseq.mamba_bio.metrics import best_markov_perplexity, lm_metrics, lm_nll
from mambaseq.mamba_bio.pretraining import (clm_eval, clm_loss, mlm_eval, mlm_loss,
                                            pretraining_regions, region_line, region_text,
                                            split_rows)
from mambaseq.mamba_bio.simulate import DEFAULT_TREE, simulate_genomes, write_species_fastas
from mambaseq.mamba_bio.token_cache import TokenCache
from mambaseq.mamba_bio.tokenizers import CharTokenizer

from .training import (Config, TrainConfig, check_resume_split, fraction, is_main_process,
                       load_model, non_negative_float, option, positive_int,
                       resolve_device, run_folder, seed_everything, seed_int,
                       share, share_below_one, train)

MARKOV_MAX_BASES = 20_000_000      # the Markov baseline reads the splits into memory
SPLIT_FILE = "split.bed"           # <out>/split.bed: the regions a run trains and validates on


@dataclasses.dataclass(kw_only=True)
class FastaOptions(Config):
    """How every genome job reads its FASTA files."""

    OPTIONS_GROUP = "FASTA input"
    decompress_gzip: bool = option(False, help="accept a plain-gzip FASTA by decompressing it "
                                               "once to a cache")


@dataclasses.dataclass(kw_only=True)
class ModelReadOptions(FastaOptions):
    """How a job runs a trained model over whole records (eval-genome, embed)."""

    chunk_len: int = option(2 ** 14, rule=positive_int,
                            help="bases per forward chunk (memory bound)")
    device: str = option("cpu", choices=("cpu", "cuda"), help="where the model runs")


@dataclasses.dataclass(kw_only=True)
class GenomeModelOptions(Config):
    """The model size every genome job that builds a model shares."""

    OPTIONS_GROUP = "model"
    d_model: int = option(128, rule=positive_int, help="model width D")
    n_layer: int = option(4, rule=positive_int, help="number of Mamba layers")
    d_state: int = option(16, rule=positive_int, help="SSM state size N")


@dataclasses.dataclass(kw_only=True)
class PretrainGenomeConfig(FastaOptions, GenomeModelOptions, TrainConfig):
    """Options of :func:`pretrain_genome` (and of ``mambaseq pretrain-genome``)."""

    OPTIONS_GROUP = "genome"
    fasta: list[str] | None = option(None, help="FASTA files (plain or bgzip) to pretrain on")
    split_bed: str | None = option(None, metavar="FILE",
                                   help="instead of fasta: the split.bed of a classify-species "
                                        "run (its FASTA files and regions); trains on its train "
                                        "regions, validates on its val regions and never reads "
                                        "its test regions")
    bed: str | None = option(None, help="BED file: train/validate only inside these intervals "
                                        "(chromosomes of any fasta file)")
    objective: str = option("clm", choices=("clm", "mlm"),
                            help="clm: next-base prediction, causal MambaLM; mlm: masked bases, "
                                 "bidirectional MaskedLM")
    rc_equivariant: bool = option(False, help="mlm only: reverse-complement equivariant model "
                                              "(Caduceus-PS), which initialises a "
                                              "classify-species rc_invariant classifier")
    val_fraction: float = option(0.1, rule=fraction,
                                 help="share of the bases held out for validation")
    split_by: str = option("auto", choices=("auto", "record", "position"),
                           help="hold out whole records, or the end of every record")
    val_bases: int = option(200_000, rule=positive_int,
                            help="validate on at most this many bases of the val split")
    max_n_frac: float = option(0.1, rule=share,
                               help="skip training windows with more N than this")
    no_rc_augment: bool = option(False, help="do not reverse-complement half of the training "
                                             "windows")
    strict: bool = option(False, help="IUPAC codes other than N are an error instead of N")

    def __post_init__(self):
        super().__post_init__()
        if self.rc_equivariant and self.objective != "mlm":
            raise ValueError("rc_equivariant needs objective mlm (a causal model reads one "
                             "strand)")


@dataclasses.dataclass
class PretrainResult:
    """What :func:`pretrain_genome` made: the model folder, the run folder, the report
    (``objective``, ``steps``, ``train_loss``, ``val``, ``splits``, ``markov_baseline``)."""

    model_dir: Path
    out: Path
    report: dict

    def summary(self) -> dict:
        """The report without its region lists (what the command line prints)."""
        return {k: v for k, v in self.report.items() if k != "splits"}


def keep_split_bed(path: Path, rows: list[SplitRegion], resume: bool, inputs: str,
                   write: bool = True) -> Path:
    """Write the split a run trains on to ``path``; on ``resume``, check instead that
    ``rows``, the split derived again from the inputs, is the one there.

    Args:
        inputs: the options the split comes from, named when it differs.
        write: False on the processes that leave the writing to another.
    Raises:
        ValueError: on resume, another split than the run's own (the inputs changed).
    """
    if resume and path.is_file():
        check_resume_split([region_line(r) for r in read_split_bed(path)],
                           [region_line(r) for r in rows], path, inputs)
    elif write:
        write_split_bed(path, rows)
    return path


def pretrain_genome(config: PretrainGenomeConfig) -> PretrainResult:
    """Pretrain a causal (clm) or masked (mlm) genome language model.

    Raises:
        ValueError: bad input (an empty FASTA, a region outside its file, ...), naming it;
            ``out_folder.OutRefused``: ``config.out`` is not a folder this job may write.
    """
    # the inputs are read (and refused, naming the file) before the out folder is touched
    regions = pretraining_regions(config.fasta, config.split_bed, config.bed,
                                  config.val_fraction, config.split_by, config.decompress_gzip)
    with run_folder(config, "pretrain-genome", training=True) as out:
        return _pretrain(config, out, *regions)


def _pretrain(config: PretrainGenomeConfig, out: Path, files, sources, splits) -> PretrainResult:
    tokenizer = CharTokenizer(strict=config.strict)
    keep_split_bed(out / SPLIT_FILE, split_rows(files, splits), config.resume,
                   "split_bed" if config.split_bed else "fasta/bed", write=is_main_process())
    seed_everything(config.seed)
    common = dict(tokenizer=tokenizer, objective=config.objective,
                  max_n_frac=config.max_n_frac, seed=config.seed)
    train_data = GenomeWindows(sources, splits["train"], rc_augment=not config.no_rc_augment,
                               **common)
    size = dict(vocab_size=tokenizer.vocab_size, d_model=config.d_model,
                n_layer=config.n_layer, d_state=config.d_state)
    if config.objective == "clm":
        model = core.MambaLM(core.MambaLMConfig(**size))
        loss_fn = clm_loss
        val_texts = region_text(sources, splits["val"], config.val_bases)
        eval_fn = clm_eval(val_texts, tokenizer, [
            f"{f}:{r.name}:{r.start}" for f, rs in zip(files, splits["val"]) for r in rs])
    else:
        model = MaskedLM(MaskedLMConfig(**size, rc_equivariant=config.rc_equivariant,
                                        complement=tokenizer.complement_map.tolist()
                                        if config.rc_equivariant else None))
        loss_fn = mlm_loss
        val_data = GenomeWindows(sources, splits["val"], rc_augment=False, **common)
        eval_fn = mlm_eval(val_data, config.seq_len)
    summary = train(model, loss_fn, train_data.get_batch, config, eval_fn=eval_fn,
                    assets=model_assets(tokenizer))
    report = {"objective": config.objective, "steps": summary["step"],
              "train_loss": summary["loss"], "val": summary["val"],
              "splits": {k: [f"{Path(f).name}:{r.name}:{r.start}-{r.end}"
                             for f, rs in zip(files, v) for r in rs]
                         for k, v in splits.items()}}
    if config.objective == "clm":
        train_bases = sum(r.end - r.start for rs in splits["train"] for r in rs)
        if train_bases + sum(map(len, val_texts)) <= MARKOV_MAX_BASES:
            # Fit on the train split, score the same val bases as the model.
            report["markov_baseline"] = best_markov_perplexity(
                "N".join(region_text(sources, splits["train"])), "N".join(val_texts))
    if is_main_process():
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return PretrainResult(model_dir=out / "model", out=out, report=report)


@dataclasses.dataclass(kw_only=True)
class EvalGenomeConfig(ModelReadOptions):
    """Options of :func:`evaluate_genome` (and of ``mambaseq eval-genome``)."""

    OPTIONS_GROUP = "eval-genome"
    model: str = option(help="model folder (pretrain-genome's OUT/model)")
    fasta: list[str] = option(help="FASTA file(s) to score")
    bed: str | None = option(None, help="score only these intervals (BED, for a single fasta)")

    def __post_init__(self):
        super().__post_init__()
        if self.bed and len(self.fasta) != 1:
            raise ValueError("bed needs exactly one fasta")


def evaluate_genome(config: EvalGenomeConfig) -> dict:
    """Perplexity and bits per base of a causal genome model on FASTA files.

    Every record (or BED interval) is read in one causal pass from [BOS], in chunks that pass
    the recurrent state. Only A C G T are scored (an N is neither predicted nor counted).
    Each FASTA is encoded once into the token cache (``mamba_bio.token_cache``) and a record
    read from it chunk by chunk: memory is bounded by ``chunk_len``, whatever its length.

    Returns:
        {"perplexity", "bits_per_base", "tokens"}
    """
    device = resolve_device(config.device)          # names the device when there is no GPU
    model = load_model(config.model, device=device)
    if not isinstance(model, core.MambaLM):
        raise ValueError(f"{config.model} holds a {type(model).__name__}; evaluating a genome "
                         "LM needs a causal MambaLM (pretrain-genome with objective clm)")
    tokenizer = CharTokenizer.load(config.model)
    jobs = []
    for path in config.fasta:
        source = open_sequences(path, decompress_gzip=config.decompress_gzip)
        cache = TokenCache.open(source, tokenizer)       # encoded once, read chunk by chunk
        regions = (read_bed(config.bed, lengths=source.lengths) if config.bed else
                   [Window(n, 0, source.lengths[n]) for n in source.names])
        jobs += [(cache, r) for r in regions]
    total, count = 0.0, 0
    for cache, r in tqdm(jobs, unit="record", disable=len(jobs) < 2):
        ids = cache.ids(r.name, r.start, r.end, r.strand, bos_id=tokenizer.bos_id)  # lazy (L+1,)
        nll, n = lm_nll(model, ids.to(device), chunk_len=config.chunk_len)
        total, count = total + nll, count + n
    if count == 0:
        raise ValueError(f"no A/C/G/T bases to score in {', '.join(config.fasta)}")
    return lm_metrics(total, count)


@dataclasses.dataclass(kw_only=True)
class SimulateGenomesConfig(Config):
    """Options of :func:`simulate_genome_fastas` (and of ``mambaseq simulate-genomes``)."""

    OPTIONS_GROUP = "simulation"
    out: str = option(help="output folder: one FASTA per species", metavar="DIR")
    tree: str = option(DEFAULT_TREE, help="Newick tree with branch lengths")
    length: int = option(20_000, rule=positive_int, help="bases per chromosome")
    chromosomes: int = option(1, rule=positive_int, help="chromosomes per genome")
    model: str = option("hky", choices=("hky", "gtr"), help="substitution model")
    indel_rate: float = option(0.0, rule=non_negative_float, help="indels per substitution")
    composition_sd: float = option(0.0, rule=non_negative_float,
                                   help="lineage-specific base composition (learnable species "
                                        "signal)")
    repeat_fraction: float = option(0.0, rule=share_below_one,
                                    help="share of each genome made of lineage-specific repeat "
                                         "copies")
    seed: int = option(0, rule=seed_int, help="seed of the simulation")


def simulate_genome_fastas(config: SimulateGenomesConfig) -> dict[str, Path]:
    """Genomes evolved along a tree (``mamba_bio.simulate``), one FASTA per species.

    >>> import tempfile
    >>> out = tempfile.mkdtemp() + "/sim"
    >>> sorted(simulate_genome_fastas(SimulateGenomesConfig(out=out, tree="(a:0.1,b:0.1);",
    ...                                                     length=300)))
    ['a', 'b']

    Returns:
        species name -> its FASTA path (records chr1..chrK)
    """
    with run_folder(config, "simulate-genomes", training=False) as out:
        genomes = simulate_genomes(config.tree, config.length, config.chromosomes,
                                   model=config.model, indel_rate=config.indel_rate,
                                   composition_sd=config.composition_sd,
                                   repeat_fraction=config.repeat_fraction, seed=config.seed)
        return write_species_fastas(out, genomes)
