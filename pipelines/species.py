"""Species classifiers as jobs: train one on the genomes of several species, apply one to new
FASTA files.

    from mambaseq.pipelines.species import (ClassifySpeciesConfig, PredictSpeciesConfig,
                                            predict_species, train_species_classifier)
    result = train_species_classifier(ClassifySpeciesConfig(
        species=["human=hs.fa", "chimp=pt.fa,pt2.fa"], out="runs/apes", steps=1000))
    result.report["accuracy"], result.report["baseline_accuracy"], result.model_dir
    calls = predict_species(PredictSpeciesConfig(model=[str(result.model_dir)],
                                                 fasta=["new.fa"], out="preds.tsv"))

Training: windows are drawn Great-Apes style (species uniformly, then region, then position)
from region-disjoint train/val/test splits (by record when a species has several, else by
disjoint position ranges). A ``core.SequenceClassifier`` (bidirectional by default,
optionally RC-invariant, from scratch, from a pretrained genome model, or from one pretrained
first on the train regions) is trained; the test report gives accuracy, per-class F1 and the
confusion matrix, beside a k-mer + logistic-regression baseline fit on training windows of
the same split and scored on the same test windows, and an exact-shared-k-mer baseline
(``mamba_bio.kmer_match``, ``exact_k``) on the same windows. Written to OUT/report.json and
OUT/confusion.png. A ``preset`` (``PRESETS``, e.g. "close-lineages": long windows reached by
a sequence-length warmup) fills the options left at their defaults.

With ``folds`` K every genome is cut into K blocks and K classifiers are trained (in
OUT/fold0 ...), classifier i tested on block i of every genome: the report pools all K test
sets, so every region of every genome is tested once, and lists each fold's accuracy. With
``seeds`` one classifier is trained per seed (OUT/seedS) and the report pools them and scores
their ensemble.

Prediction writes two files:

- ``out`` (TSV), one row per window: ``file``, ``record``, ``start``, ``end`` (0-based,
  end-exclusive), ``predicted``, then one column per class (named by the class) holding its
  probability; the probabilities of a row sum to 1.
- ``summary`` (default: PREDS.summary.tsv beside ``out``), one row per record: ``file``,
  ``record``, ``length``, ``windows``, ``predicted`` (the class of highest mean probability)
  and the mean probability of each class; a ``.json`` name gives a JSON list of the same
  fields (the means under "mean_probabilities"). A record without a usable window has 0
  windows and no call.

Windows follow ``mamba_bio.predict`` (every ``stride`` bases plus one window ending at a
record's end; all-N windows skipped), read one at a time, so a chromosome of any length runs
in bounded memory. Several ``model`` folders of the same classes score as one ensemble.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mambaseq.mamba_bio.datasets import SpeciesWindows, check_fractions
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.kmer_match import ExactKmerMatch
from mambaseq.mamba_bio.metrics import kmer_baseline, plot_confusion
from mambaseq.mamba_bio.predict import load_classifiers, predict_records, window_probabilities
from mambaseq.mamba_bio.species import (PartScores, build_classifier, check_eval_lengths,
                                        classifier_eval, classify_loss, copy_pretrained,
                                        exact_kmer_method, parse_species, pooled_report,
                                        region_sequences, score_lengths, seed_ensemble,
                                        write_accuracy_vs_length)
from mambaseq.core.model_folder import model_assets
from mambaseq.mamba_bio.tokenizers import CharTokenizer

from .genome import (SPLIT_FILE, FastaOptions, GenomeModelOptions, ModelReadOptions,
                     PretrainGenomeConfig, keep_split_bed, pretrain_genome)
from .training import (BEST, ConfigError, Number, TrainConfig, is_main_process,
                       load_model, non_negative_int, option, out_folder, positive_int,
                       redefault, run_folder, seed_everything, seed_int, share,
                       share_below_one, train)
from .training.checkpoints import latest_checkpoint

KMER = Number("kmer", int, 1, 31)          # kmer: the k-mer index holds k <= 31 in int64
EXACT_K = Number("exact_k", int, 0, 31)    # 0: no exact-k-mer baseline


# Recipes: option values a preset gives every option left at classify-species' own default.
PRESETS = {
    # Close lineages of one species told apart on long windows (issue 30): the window grows
    # 1 kb -> 8 kb -> 32 kb by a sequence-length warmup (the batch shrinking as it grows, a
    # constant 16k bases a step), a causal 1-layer model with 6-mer embeddings, max pooling
    # (validation accuracy 0.456 vs 0.25 for mean pooling, seed 0, 32 kb windows; it wins by
    # spotting assembly gaps, see the README), accuracy against the window from 1 kb to 64 kb
    # beside the 6-mer and the exact-31-mer baselines, a test share that leaves >= 100 tiles
    # of 32 kb in four 3 Mb genomes. 7-14 minutes a seed for four lineages of 3 Mb on one
    # thread. See the README, "Close lineages at long context".
    "close-lineages": {
        "seq_len": 32768, "batch_size": 1, "seq_len_schedule": "300:1024:16,150:8192:2",
        "steps": 700, "lr": 3e-3, "warmup_steps": 50, "eval_every": 350,
        "d_model": 64, "n_layer": 1, "causal": True, "ngram": 6, "pooling": "max",
        "split_by": "position", "fractions": (0.6, 0.05, 0.35), "eval_per_class": 40,
        "eval_lengths": [1024, 2048, 4096, 8192, 16384, 32768, 65536],
        "baseline_per_class": 100, "kmer": 6, "exact_k": 31,
    },
}


@dataclasses.dataclass(kw_only=True)
class ClassifySpeciesConfig(FastaOptions, GenomeModelOptions, TrainConfig):
    """Options of :func:`train_species_classifier` (and of ``mambaseq classify-species``).

    A preset (``PRESETS``) gives its values to every option not given:
    :meth:`from_preset` (and ``--preset`` on the command line, which knows the options named)
    sets every given option on top of the preset's, whatever its value. Built directly with
    ``preset=``, the config cannot tell an option given at its ordinary default from one left
    out, so every option still at classify-species' default takes the preset's value. The
    resolved options are the config's fields, so the run's config.json shows them.

    >>> config = ClassifySpeciesConfig.from_preset(
    ...     "close-lineages", species=["a=a.fa", "b=b.fa"], out="runs/ab", steps=500)
    >>> config.seq_len, config.steps, config.preset          # steps 500 is given: it wins
    (32768, 500, 'close-lineages')
    """

    OPTIONS_GROUP = "species"
    preset: str | None = option(None, choices=tuple(PRESETS), metavar="NAME",
                                help="a recipe's option values for every option not given "
                                     "(close-lineages: long windows reached by a "
                                     "sequence-length warmup, see the README); an option you "
                                     "give wins; config.json shows the resolved options")
    # classify-species' own defaults of the training and model options
    seq_len: int = redefault(TrainConfig, "seq_len", 1000, help="bases per training window")
    steps: int = redefault(TrainConfig, "steps", 500)
    batch_size: int = redefault(TrainConfig, "batch_size", 16,
                                help="windows per micro-batch on each process")
    eval_every: int = redefault(TrainConfig, "eval_every", 100)
    warmup_steps: int = redefault(TrainConfig, "warmup_steps", 50)
    d_model: int = redefault(GenomeModelOptions, "d_model", 64)
    n_layer: int = redefault(GenomeModelOptions, "n_layer", 2)

    species: list[str] = option(metavar="NAME=FASTA[,FASTA]", help="one entry per species")
    split_by: str = option("auto", choices=("auto", "record", "position"),
                           help="disjoint regions by record, or by position ranges within "
                                "records")
    fractions: tuple[float, float, float] = option(
        (0.8, 0.1, 0.1), rule=share, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
        help="shares of each genome per split")
    folds: int = option(0, rule=non_negative_int, metavar="K",
                        help="k-fold cross-validation: K models, each tested on its own 1/K "
                             "block of every genome (validation: the val share of fractions "
                             "beside it); the report pools the K test sets (0: one split, "
                             "split_by)")
    seeds: list[int] | None = option(None, rule=seed_int, metavar="S",
                                     help="train one classifier per seed (in OUT/seedS; the "
                                          "seed draws the model init, the training windows and "
                                          "the test windows of the same test regions) and pool "
                                          "their test windows in the report")
    pretrain_steps: int = option(0, rule=non_negative_int, metavar="N",
                                 help="first pretrain a language model for N steps on the "
                                      "train regions of all species (pretrain-genome on "
                                      "OUT/split.bed, into OUT/pretrain; mlm, or clm when "
                                      "causal, rc-equivariant when rc_invariant) and fine-tune "
                                      "the classifier from it; test regions are never read")
    eval_lengths: list[int] | None = option(None, rule=positive_int, metavar="L",
                                            help="also score the test regions with windows of "
                                                 "these lengths (model and a k-mer baseline "
                                                 "fit on train windows of each length); "
                                                 "writes OUT/accuracy_vs_length.json and .png")
    eval_tokens: int = option(64_000, rule=positive_int, metavar="T",
                              help="tokens per batch when predicting (windows per batch = T "
                                   "// length)")
    no_rc_augment: bool = option(False, help="train on the given strand only (by default half "
                                             "of the training windows are "
                                             "reverse-complemented, which hides strand "
                                             "asymmetry, a species signal in mitogenomes)")
    no_strand_average: bool = option(False, help="score each window on the given strand only "
                                                 "(by default a model trained on both strands "
                                                 "averages the class log-probabilities of a "
                                                 "window and its reverse complement, in "
                                                 "validation, test and predict-species)")
    substitution_rate: float = option(0.0, rule=share_below_one, metavar="P",
                                      help="replace each base of a training window by a random "
                                           "base with probability P (regularises a model that "
                                           "memorises its training regions)")
    causal: bool = option(False, help="causal MambaBackbone instead of the bidirectional one")
    rc_invariant: bool = option(False, help="RC-equivariant backbone + invariant head "
                                            "(bidirectional only)")
    pooling: str = option("mean", choices=("mean", "max", "last"),
                          help="how the classifier pools the positions of a window")
    ngram: int = option(0, rule=non_negative_int, metavar="K",
                        help="add an embedding of the overlapping K-mer ending at each base to "
                             "the base embedding (core.NgramEmbedding): the model starts from "
                             "the features of a K-mer baseline and the backbone adds context "
                             "(0: bases only; not with rc_invariant)")
    init_from: str | None = option(None, metavar="DIR",
                                   help="start from a pretrained model's embedding and backbone "
                                        "(pretrain-genome: clm when causal, mlm otherwise, an "
                                        "rc_equivariant mlm when rc_invariant)")
    eval_per_class: int = option(50, rule=positive_int,
                                 help="fixed validation/test windows per species")
    baseline_per_class: int = option(200, rule=positive_int,
                                     help="training windows per species for the k-mer baseline")
    kmer: int = option(3, rule=KMER,
                       help="k of the k-mer baseline (3 is its best on 1 kb mitogenome windows)")
    exact_k: int = option(31, rule=EXACT_K, metavar="K",
                          help="k of the exact-shared-k-mer baseline (a window goes to the "
                               "species whose training regions hold the most of its canonical "
                               "K-mers, Kraken/Mash-like; scored on the same test windows, in "
                               "the report and the accuracy-vs-length plot; 0: off)")
    exact_unique: bool = option(False, help="the exact-k-mer baseline counts only k-mers found "
                                            "in one species' training regions")

    @classmethod
    def from_preset(cls, name: str, **options) -> "ClassifySpeciesConfig":
        """The config of preset ``name`` with ``options`` (species, out, ...) set on top:
        every option given wins, whatever its value (``ClassifySpeciesConfig(preset=name,
        ...)`` cannot tell an option given at its ordinary default from one left out)."""
        if name not in PRESETS:
            raise ConfigError(cls.__name__, "preset", f"must be one of "
                                                      f"{', '.join(PRESETS)}, got {name!r}")
        config = cls(**{**PRESETS[name], **options})
        config.preset = name                   # the recipe the options came from, for config.json
        return config

    def __post_init__(self):
        if self.preset in PRESETS:
            defaults = {f.name: f.default if f.default is not dataclasses.MISSING
                        else f.default_factory() for f in dataclasses.fields(self)
                        if f.name in PRESETS[self.preset]}
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)
        super().__post_init__()
        owner = type(self).__name__
        try:
            named = parse_species(self.species)
        except ValueError as err:
            raise ConfigError(owner, "species", str(err)) from None
        if len(named) < 2:
            raise ConfigError(owner, "species", f"needs at least 2 species, got {len(named)}")
        try:
            check_fractions(self.fractions)
        except ValueError as err:
            raise ConfigError(owner, "fractions", str(err).removeprefix("fractions ")) from None
        if self.folds == 1:
            raise ConfigError(owner, "folds", "must be 0 (one split) or at least 2, got 1")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(owner, "seeds", f"must differ, got {list(self.seeds)}")
        if self.folds and self.seeds:
            raise ValueError("folds and seeds both repeat the training; choose one")
        if self.pretrain_steps and self.init_from:
            raise ValueError("pretrain_steps and init_from both give the starting model; "
                             "choose one")
        if self.rc_invariant and (self.causal or self.ngram or self.pooling == "last"):
            raise ValueError("rc_invariant needs a bidirectional model (not causal), no ngram "
                             "and pooling mean or max")


@dataclasses.dataclass
class SpeciesResult:
    """What :func:`train_species_classifier` made.

    Attributes:
        report: the report written to OUT/report.json (see ``mamba_bio.species.pooled_report``;
            with several seeds also "seed_ensemble"); {} on the torchrun processes other than
            the main one, which write nothing.
        out: the run folder.
        model_dir: the classifier's folder (OUT/model; with folds or seeds the first part's,
            e.g. OUT/fold0/model: every part's is in ``parts``).
        parts: one ``PartScores`` per trained classifier (test calls, scored model, folder).
    """

    report: dict
    out: Path
    model_dir: Path
    parts: list[PartScores]

    def summary(self) -> dict:
        """The headline figures of the report and its path (what the command line prints)."""
        report = self.report
        summary = {k: report[k] for k in ("accuracy", "baseline_accuracy",
                                          "exact_kmer_accuracy", "chance",
                                          "paired_vs_baseline", "per_class_f1") if k in report}
        kind = "folds" if "folds" in report else "seeds" if "seeds" in report else None
        if kind:
            summary.update({k: report[k] for k in ("accuracy_sd", "baseline_accuracy_sd",
                                                   f"{kind}_won")})
            if "seed_ensemble" in report:
                summary["seed_ensemble_accuracy"] = report["seed_ensemble"]["accuracy"]
        if "accuracy_vs_length" in report:
            summary["accuracy_vs_length"] = {
                r["length"]: [round(r[k], 4) for k in ("accuracy", "baseline_accuracy",
                                                       "exact_kmer_accuracy") if k in r]
                for r in report["accuracy_vs_length"]}
        return {**summary, "report": str(self.out / "report.json")}


def train_species_classifier(config: ClassifySpeciesConfig) -> SpeciesResult:
    """Train a species classifier (or one per fold or seed) and report it beside a k-mer
    baseline on the same test windows.

    >>> from mambaseq.mamba_bio import simulate_genomes, write_species_fastas
    >>> fastas = write_species_fastas("genomes", simulate_genomes("((a:0.1,b:0.1):0.1,c:0.2);",
    ...                                                           length=4000))
    >>> result = train_species_classifier(ClassifySpeciesConfig(
    ...     species=[f"{name}={path}" for name, path in fastas.items()], out="runs/abc",
    ...     seeds=[0, 1], eval_lengths=[100, 400], seq_len=100, steps=2, d_model=8, n_layer=1,
    ...     batch_size=2, eval_per_class=2, baseline_per_class=4, device="cpu"))
    >>> result.report["classes"], 0 <= result.report["seed_ensemble"]["accuracy"] <= 1
    (['a', 'b', 'c'], True)
    >>> [part.model_dir.as_posix() for part in result.parts]
    ['runs/abc/seed0/model', 'runs/abc/seed1/model']

    Raises:
        ValueError: bad input (a missing FASTA, an eval length no test region holds, a
            pretrained model that does not fit), naming it; ``out_folder.OutRefused``:
            ``config.out`` is not a folder this job may write.
    """
    # the inputs are opened (and refused, naming the file) before the out folder is touched
    species = {name: [open_sequences(f, decompress_gzip=config.decompress_gzip) for f in files]
               for name, files in parse_species(config.species).items()}
    with run_folder(config, "classify-species", training=True) as out:
        return _classify(config, out, species)


def _classify(config: ClassifySpeciesConfig, out: Path, species: dict) -> SpeciesResult:
    tokenizer = CharTokenizer()
    parts = _train_parts(config, species, tokenizer)
    if not is_main_process():
        return SpeciesResult(report={}, out=out, model_dir=parts[0].model_dir, parts=parts)
    report = pooled_report(parts, kmer=config.kmer, seq_len=config.seq_len)
    if config.seeds and len(parts) > 1:
        report["seed_ensemble"] = seed_ensemble(parts, tokenizer, config.eval_tokens)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    what = (f"{config.folds}-fold CV, " if config.folds
            else f"{len(config.seeds)} seeds, " if config.seeds else "")
    plot_confusion(report["confusion_matrix"], report["classes"], out / "confusion.png",
                   title=f"{what}Mamba {report['accuracy']:.1%} | k-mer baseline "
                         f"{report['baseline_accuracy']:.1%}")
    if "accuracy_vs_length" in report:
        write_accuracy_vs_length(report, out, config.eval_per_class)
    return SpeciesResult(report=report, out=out, model_dir=parts[0].model_dir, parts=parts)


def _train_parts(config: ClassifySpeciesConfig, species: dict,
                 tokenizer: CharTokenizer) -> list[PartScores]:
    """One classifier (one split), or one per fold (OUT/foldI) or per seed (OUT/seedS)."""
    out = Path(config.out)
    if config.folds:
        return [dataclasses.replace(
                    _train_part(dataclasses.replace(config, out=str(out / f"fold{i}")),
                                species, tokenizer, by="fold", fold=(i, config.folds)),
                    fold=i) for i in range(config.folds)]
    if config.seeds:
        return [dataclasses.replace(
                    _train_part(dataclasses.replace(config, seed=s, out=str(out / f"seed{s}")),
                                species, tokenizer, by=config.split_by),
                    seed=s) for s in config.seeds]
    return [_train_part(config, species, tokenizer, by=config.split_by)]


def _train_part(config: ClassifySpeciesConfig, species: dict, tokenizer: CharTokenizer,
                by: str, fold: tuple[int, int] | None = None) -> PartScores:
    """Train one classifier on one split (into ``config.out``) and score its test windows,
    with the baseline.

    Writes the split to OUT/split.bed first (on resume, checks that it is the run's own);
    with ``pretrain_steps``, pretrains on its train regions and fine-tunes from that model.
    """
    out = Path(config.out)
    data = SpeciesWindows(species, fractions=config.fractions, by=by, tokenizer=tokenizer,
                          rc_augment=not config.no_rc_augment, seed=config.seed, fold=fold,
                          substitution_rate=config.substitution_rate)
    val_x, val_y = data.fixed_windows("val", config.seq_len, config.eval_per_class)
    test_x, test_y = data.fixed_windows("test", config.seq_len, config.eval_per_class)
    check_eval_lengths(data, config.eval_lengths or [])
    out.mkdir(parents=True, exist_ok=True)
    split_bed = keep_split_bed(out / SPLIT_FILE, data.split_table(), config.resume,
                               "the FASTA files of species", write=is_main_process())
    init_from = _pretrain(config, split_bed) if config.pretrain_steps else config.init_from

    seed_everything(config.seed)
    model = build_classifier(tokenizer, len(data.classes), d_model=config.d_model,
                             n_layer=config.n_layer, d_state=config.d_state,
                             pooling=config.pooling, causal=config.causal,
                             rc_invariant=config.rc_invariant, ngram=config.ngram,
                             rc_augment=not config.no_rc_augment,
                             strand_average=not config.no_strand_average)
    if init_from:
        copy_pretrained(model, load_model(init_from), f"init_from {init_from}")
    summary = train(model, classify_loss, data.get_batch, config,
                    eval_fn=classifier_eval(val_x, val_y, tokenizer, config.eval_tokens),
                    assets=model_assets(tokenizer, data.classes))

    # Score the checkpoint of lowest validation loss when validation ran, else the final model.
    best = Path(summary["out"]) / "checkpoints" / BEST
    scored = load_model(best) if best.is_dir() else model.cpu()
    train_x, train_y = data.fixed_windows("train", config.seq_len, config.baseline_per_class)
    pred = window_probabilities(scored, tokenizer, test_x, config.eval_tokens).argmax(1)
    exact = (ExactKmerMatch(config.exact_k, unique=config.exact_unique, seed=config.seed)
             .fit(region_sequences(data, "train")) if config.exact_k else None)
    by_length = score_lengths(scored, data, tokenizer, config.eval_lengths,
                              per_class=config.eval_per_class,
                              baseline_per_class=config.baseline_per_class, kmer=config.kmer,
                              seed=config.seed, tokens_per_batch=config.eval_tokens,
                              exact=exact) \
        if config.eval_lengths else {}
    return PartScores(
        classes=data.classes, labels=test_y, pred=pred,
        baseline_pred=kmer_baseline(train_x, train_y, test_x, k=config.kmer, seed=config.seed),
        windows=test_x, model=scored, steps=summary["step"],
        scored_model="best validation checkpoint" if best.is_dir() else "final model",
        test_regions={c: [f"{Path(p).name}:{w.name}:{w.start}-{w.end}" for p, w in r]
                      for c, r in zip(data.classes, data.regions("test"))},
        by_length=by_length, model_dir=Path(summary["model_dir"]),
        exact_pred=exact.predict(test_x) if exact else None,
        exact_method=exact_kmer_method(exact) if exact else None)


def _pretrain(config: ClassifySpeciesConfig, split_bed: Path) -> Path:
    """Pretrain a language model on the train regions of ``split_bed`` (pretrain-genome into
    OUT/pretrain, resumed when it is there); returns its model folder."""
    out = Path(config.out) / "pretrain"
    if (out / "model").is_dir() and (out / "report.json").is_file():
        return out / "model"                                   # finished in an earlier run
    return pretrain_genome(PretrainGenomeConfig(
        split_bed=str(split_bed), out=str(out), objective="clm" if config.causal else "mlm",
        steps=config.pretrain_steps, seq_len=config.seq_len, batch_size=config.batch_size,
        d_model=config.d_model, n_layer=config.n_layer, d_state=config.d_state, lr=config.lr,
        warmup_steps=config.warmup_steps, seed=config.seed, device=config.device,
        eval_every=config.eval_every or config.pretrain_steps,
        rc_equivariant=config.rc_invariant, resume=(out / "checkpoints").is_dir(),
        decompress_gzip=config.decompress_gzip)).model_dir


# -- predict-species ---------------------------------------------------------------------

FIXED_COLUMNS = ("file", "record", "start", "end", "predicted")
SUMMARY_COLUMNS = ("file", "record", "length", "windows", "predicted")
TRAIN_CONFIG = "train_config.json"               # a checkpoint's training options


@dataclasses.dataclass(kw_only=True)
class PredictSpeciesConfig(FastaOptions):
    """Options of :func:`predict_species` (and of ``mambaseq predict-species``)."""

    OPTIONS_GROUP = "predict-species"
    model: list[str] = option(metavar="DIR",
                              help="classifier folder of a classify-species run: OUT/model, "
                                   "OUT/checkpoints/best or OUT/checkpoints/step_*; several "
                                   "folders of the same classes are averaged as an ensemble")
    fasta: list[str] = option(metavar="F", help="FASTA (plain or bgzip) or GenBank files")
    out: str = option(metavar="PREDS.tsv", help="per-window predictions (TSV)")
    summary: str | None = option(None, metavar="FILE",
                                 help="per-record summary, .tsv or .json (default: "
                                      "PREDS.summary.tsv beside out)")
    window: int | None = option(None, rule=positive_int,
                                help="window length in bases (default: the seq_len the "
                                     "classifier was trained with, from its run's "
                                     "train_config.json)")
    stride: int | None = option(None, rule=positive_int,
                                help="bases between window starts (default: window, no "
                                     "overlap)")
    batch_size: int = option(32, rule=positive_int, help="windows per forward pass")
    device: str = redefault(ModelReadOptions, "device", "cpu")

    def __post_init__(self):
        super().__post_init__()
        if self.summary is not None and Path(self.summary).suffix.lower() not in (".tsv",
                                                                                  ".json"):
            raise ConfigError(type(self).__name__, "summary",
                              f"must end in .tsv or .json, got {self.summary}")

    @property
    def summary_path(self) -> Path:
        """The summary file: ``summary``, else PREDS.summary.tsv beside ``out``."""
        if self.summary is not None:
            return Path(self.summary)
        out = Path(self.out)
        return out.with_name(f"{out.name.removesuffix('.tsv')}.summary.tsv")


@dataclasses.dataclass
class RecordCall:
    """One record's call: its windows' mean class probabilities (None when no window of it
    could be scored) and the class of the highest one. A row of the summary."""

    file: str
    record: str
    length: int
    windows: int
    predicted: str | None
    mean_probabilities: dict[str, float] | None


@dataclasses.dataclass
class PredictResult:
    """What :func:`predict_species` wrote: the per-window TSV (``out``), the per-record
    ``summary``, the classes, the window and stride used and one ``RecordCall`` per record
    (in file order)."""

    out: Path
    summary: Path
    classes: list[str]
    window: int
    stride: int
    records: list[RecordCall]

    @property
    def windows(self) -> int:
        """Windows scored over all records."""
        return sum(r.windows for r in self.records)


def training_window(directory) -> int | None:
    """The window length (``seq_len``) the classifier in ``directory`` was trained on: from the
    folder's own train_config.json (a checkpoint), or for a run's ``model/`` folder from the
    run's newest checkpoint beside it; None when neither is there (a folder copied out of its
    run).

    Raises:
        ValueError: a train_config.json that is not JSON or has no positive ``seq_len``.
    """
    directory = Path(directory)
    path = directory / TRAIN_CONFIG
    if not path.is_file() and directory.name == "model":
        latest = latest_checkpoint(directory.parent / "checkpoints")
        path = latest / TRAIN_CONFIG if latest is not None else path
    if not path.is_file():
        return None
    try:
        seq_len = json.loads(path.read_text()).get("seq_len")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a JSON object of training options ({err})") from None
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"{path}: seq_len {seq_len!r} is not a positive integer")
    return seq_len


def _default_window(models) -> int:
    """The one training window of ``models`` (see ``training_window``), or a ValueError that
    asks for ``window`` and says why."""
    windows = {str(m): training_window(m) for m in models}
    unknown = [m for m, w in windows.items() if w is None]
    if unknown:
        raise ValueError(f"{unknown[0]}: no {TRAIN_CONFIG} here or in its run's checkpoints/ "
                         "to tell the window length the classifier was trained on; pass "
                         "window (its training seq_len)")
    if len(set(windows.values())) > 1:
        raise ValueError(f"model: the classifiers were trained on different window lengths "
                         f"({', '.join(f'{m}: {w}' for m, w in windows.items())}); pass window")
    return next(iter(windows.values()))


def _fmt(p: float) -> str:
    return f"{p:.6g}"


def write_summary(path: Path, rows: list[RecordCall], classes: list[str]) -> None:
    """The per-record summary as JSON (a list of rows) or TSV (one line per record), written
    under a temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
    else:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow([*SUMMARY_COLUMNS, *classes])
            for row in rows:
                probs = row.mean_probabilities
                writer.writerow([row.file, row.record, row.length, row.windows,
                                 row.predicted or "",
                                 *([_fmt(probs[c]) for c in classes] if probs else
                                   [""] * len(classes))])
    os.replace(tmp, path)


def _written_here(path: Path) -> bool:
    """``path`` is a file predict-species writes: a per-window or per-record TSV (by its
    header) or a per-record JSON list."""
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        fields = {f.name for f in dataclasses.fields(RecordCall)}
        return isinstance(rows, list) and bool(rows) and all(
            isinstance(r, dict) and set(r) == fields for r in rows)
    return any(out_folder.starts_with(path, "\t".join(columns) + "\t")
               for columns in (FIXED_COLUMNS, SUMMARY_COLUMNS))


def predict_species(config: PredictSpeciesConfig) -> PredictResult:
    """Species calls for every window and every record of ``config.fasta``: writes the
    per-window TSV ``config.out`` and the per-record summary (see the module's docstring).

    >>> from mambaseq import core
    >>> from mambaseq.mamba_bio import CharTokenizer, write_fasta
    >>> tok = CharTokenizer()        # a classifier folder, as train_species_classifier writes
    >>> clf = core.SequenceClassifier(core.SequenceClassifierConfig(
    ...     vocab_size=tok.vocab_size, d_model=8, n_layer=1, num_classes=2))
    >>> clf.save_pretrained("model", extra_json=core.model_assets(tok, ["human", "mouse"]))
    >>> _ = write_fasta("new.fa", {"r1": "ACGT" * 100, "r2": "ACGTTGCA" * 10})   # 400, 80 bases
    >>> result = predict_species(PredictSpeciesConfig(model=["model"], fasta=["new.fa"],
    ...                                               out="preds.tsv", window=100))
    >>> [(r.record, r.windows, r.predicted in ("human", "mouse")) for r in result.records]
    [('r1', 4, True), ('r2', 1, True)]
    >>> result.out.name, result.summary.name
    ('preds.tsv', 'preds.summary.tsv')

    Raises:
        ``out_folder.OutRefused``: ``out`` or the summary is an input, a link, a folder or a
            file predict-species did not write (checked before anything is read).
        ValueError: no window length known (``window`` not given and no training record), a
            file with no usable window, a model folder that is not a classifier, naming it.
    """
    out, summary = Path(config.out), config.summary_path
    inputs = out_folder.input_paths(config.to_dict())
    out_folder.check_distinct({"out": out, "summary": summary})
    for option_name, path in (("out", out), ("summary", summary)):
        out_folder.check_out_file(path, option_name, inputs, "predict-species", _written_here)
    model, tokenizer, classes = load_classifiers(config.model, device=config.device)
    window = config.window or _default_window(config.model)
    stride = config.stride or window
    clash = set(classes) & set(FIXED_COLUMNS + SUMMARY_COLUMNS)
    if clash:
        raise ValueError(f"{config.model[0]}: class name(s) {sorted(clash)} clash with the "
                         "output columns")
    sources = [(path, open_sequences(path, decompress_gzip=config.decompress_gzip))
               for path in config.fasta]
    print(f"[mambaseq] {len(classes)} classes from {' + '.join(config.model)}; windows of "
          f"{window} bases every {stride}", file=sys.stderr)

    out.parent.mkdir(parents=True, exist_ok=True)
    summary.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    records = []
    bar = tqdm(total=sum(sum(s.lengths.values()) for _, s in sources), unit="bp",
               unit_scale=True)
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow([*FIXED_COLUMNS, *classes])
            for path, source in sources:
                done = {}                                   # record -> bases passed so far

                def write_batch(name, spans, probs):
                    for (start, end), p in zip(spans, probs):
                        writer.writerow([path, name, start, end, classes[int(p.argmax())],
                                         *map(_fmt, p)])
                    bar.update(spans[-1][1] - done.get(name, 0))
                    done[name] = spans[-1][1]

                scored = 0
                for record in predict_records(model, tokenizer, source, window, stride,
                                              config.batch_size, where=path,
                                              on_batch=write_batch):
                    bar.update(record.length - done.get(record.name, 0))
                    mean = record.mean_probs
                    records.append(RecordCall(
                        file=path, record=record.name, length=record.length,
                        windows=record.windows,
                        predicted=None if mean is None else classes[int(mean.argmax())],
                        mean_probabilities=None if mean is None else
                        {c: float(p) for c, p in zip(classes, mean)}))
                    scored += record.windows
                if scored == 0:
                    raise ValueError(f"{path}: no usable window (every record is empty or "
                                     "all N)")
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    write_summary(summary, records, classes)
    return PredictResult(out=out, summary=summary, classes=classes, window=window,
                         stride=stride, records=records)
