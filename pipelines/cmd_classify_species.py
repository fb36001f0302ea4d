"""classify-species: which species does a window of DNA come from?

    python -m mambaseq.pipelines classify-species --species human=hs.fa chimp=pt.fa,pt2.fa ... \
        --seq-len 1000 --steps 1000 --out runs/species

Windows are drawn Great-Apes style (species uniformly, then region, then position) from
region-disjoint train/val/test splits (by record when a species has several, else by
disjoint position ranges). A ``core.SequenceClassifier`` (bidirectional by default,
optionally RC-invariant, from scratch or from a pretrained genome model) is trained; the
test report gives accuracy, per-class F1 and the confusion matrix, beside a k-mer +
logistic-regression baseline fit on training windows of the same split and scored on the
same test windows. Written to OUT/report.json and OUT/confusion.png.

With ``--folds K`` every genome is cut into K blocks and K classifiers are trained (in
OUT/fold0 ...), classifier i tested on block i of every genome: the report pools all K test
sets, so every region of every genome is tested once (a steadier figure than one held-out
region when each species is one short genome), and lists each fold's accuracy.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from mambaseq import core
from mambaseq.mamba_bio.datasets import SpeciesWindows
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.metrics import (accuracy_by_length, classification_report,
                                        kmer_baseline, paired_comparison,
                                        plot_accuracy_vs_length, plot_confusion)
from mambaseq.mamba_bio.predict import ClassifierEnsemble, window_probabilities
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.checkpoint import BEST, load_model, model_assets
from mambaseq.pipelines.cmd_pretrain_genome import SPLIT_FILE, keep_split_bed
from mambaseq.pipelines.distributed import is_main_process
from mambaseq.pipelines.options import (Number, TrainConfig, add_training_args, non_negative_int,
                                        positive_int, seed_int, share, share_below_one)
from mambaseq.pipelines.trainer import seed_everything, train

HELP = "train a species classifier on DNA windows, with a k-mer baseline in the same report"
KMER = Number("kmer", int, 1, 31)          # --kmer: the k-mer index holds k <= 31 in int64


def parse_species(items):
    """["human=a.fa,b.fa", ...] -> {"human": ["a.fa", "b.fa"], ...} (order kept)."""
    species = {}
    for item in items:
        name, sep, files = item.partition("=")
        if not sep or not name or not files:
            raise ValueError(f"--species expects NAME=FASTA[,FASTA...], got {item!r}")
        if name in species:
            raise ValueError(f"--species: {name!r} given twice")
        species[name] = [f for f in files.split(",") if f]
    return species


def add_arguments(parser):
    add_training_args(parser)
    parser.set_defaults(seq_len=1000, steps=500, batch_size=16, d_model=64, n_layer=2,
                        eval_every=100, warmup_steps=50)
    g = parser.add_argument_group("species")
    g.add_argument("--species", required=True, nargs="+", metavar="NAME=FASTA[,FASTA]",
                   help="one entry per species")
    g.add_argument("--split-by", choices=("auto", "record", "position"), default="auto",
                   help="disjoint regions by record, or by position ranges within records")
    g.add_argument("--fractions", type=share, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VAL", "TEST"), help="shares of each genome per split")
    g.add_argument("--folds", type=non_negative_int, default=0, metavar="K",
                   help="k-fold cross-validation: K models, each tested on its own 1/K block of "
                        "every genome (validation: the --fractions val share beside it); the "
                        "report pools the K test sets (0: one split, --split-by)")
    g.add_argument("--seeds", type=seed_int, nargs="+", default=None, metavar="S",
                   help="train one classifier per seed (in OUT/seedS; the seed draws the model "
                        "init, the training windows and the test windows of the same test "
                        "regions) and pool their test windows in the report")
    g.add_argument("--pretrain-steps", type=non_negative_int, default=0, metavar="N",
                   help="first pretrain a language model for N steps on the train regions of "
                        "all species (pretrain-genome --split-bed OUT/split.bed, into "
                        "OUT/pretrain; mlm, or clm with --causal, rc-equivariant with "
                        "--rc-invariant) and fine-tune the classifier from it; test regions "
                        "are never read")
    g.add_argument("--eval-lengths", type=positive_int, nargs="+", default=None, metavar="L",
                   help="also score the test regions with windows of these lengths (model and "
                        "a k-mer baseline fit on train windows of each length); writes "
                        "OUT/accuracy_vs_length.json and .png")
    g.add_argument("--eval-tokens", type=positive_int, default=64_000, metavar="T",
                   help="tokens per batch when predicting (windows per batch = T // length)")
    g.add_argument("--no-rc-augment", action="store_true",
                   help="train on the given strand only (by default half of the training "
                        "windows are reverse-complemented, which hides strand asymmetry, a "
                        "species signal in mitogenomes)")
    g.add_argument("--no-strand-average", action="store_true",
                   help="score each window on the given strand only (by default a model "
                        "trained on both strands averages the class log-probabilities of a "
                        "window and its reverse complement, in validation, test and "
                        "predict-species)")
    g.add_argument("--substitution-rate", type=share_below_one, default=0.0, metavar="P",
                   help="replace each base of a training window by a random base with "
                        "probability P (regularises a model that memorises its training "
                        "regions)")
    g.add_argument("--causal", action="store_true",
                   help="causal MambaBackbone instead of the bidirectional one")
    g.add_argument("--rc-invariant", action="store_true",
                   help="RC-equivariant backbone + invariant head (bidirectional only)")
    g.add_argument("--pooling", choices=("mean", "max", "last"), default="mean")
    g.add_argument("--ngram", type=non_negative_int, default=0, metavar="K",
                   help="add an embedding of the overlapping K-mer ending at each base to the "
                        "base embedding (core.NgramEmbedding): the model starts from the "
                        "features of a K-mer baseline and the backbone adds context (0: bases "
                        "only; not with --rc-invariant)")
    g.add_argument("--init-from", metavar="DIR", default=None,
                   help="start from a pretrained model's embedding and backbone "
                        "(pretrain-genome: clm for --causal, mlm otherwise, an "
                        "--rc-equivariant mlm for --rc-invariant)")
    g.add_argument("--eval-per-class", type=positive_int, default=50,
                   help="fixed validation/test windows per species")
    g.add_argument("--baseline-per-class", type=positive_int, default=200,
                   help="training windows per species for the k-mer baseline")
    g.add_argument("--kmer", type=KMER, default=3,
                   help="k of the k-mer baseline (3 is its best on 1 kb mitogenome windows)")
    g.add_argument("--d-state", type=positive_int, default=16, help="SSM state size N")
    g.add_argument("--decompress-gzip", action="store_true")


def build_model(args, cfg, n_classes, tokenizer, init_from=None):
    # trained on both strands: score a window and its reverse complement (RC-invariant already)
    strand_average = not (args.no_rc_augment or args.rc_invariant or args.no_strand_average)
    model = core.SequenceClassifier(
        tokenizer.vocab_size, cfg.d_model, cfg.n_layer, n_classes, pooling=args.pooling,
        bidirectional=not args.causal, rc_equivariant=args.rc_invariant,
        complement=tokenizer.complement_map.tolist() if args.rc_invariant or strand_average
        else None, d_state=args.d_state, ngram=args.ngram,
        ngram_letters=tokenizer.base_letters if args.ngram else None,
        strand_average=strand_average)
    if init_from:
        pre = load_model(init_from)
        try:
            # with --ngram the pretrained base embedding is the token part of the new one
            target = model.embedding.token if args.ngram else model.embedding
            target.load_state_dict(pre.embedding.state_dict())
            model.backbone.load_state_dict(pre.backbone.state_dict())
        except (RuntimeError, AttributeError) as err:
            raise ValueError(f"--init-from {init_from}: its {type(pre).__name__} does not "
                             f"fit this classifier (same --d-model/--n-layer/--d-state, "
                             f"--causal for a clm model, --rc-invariant for an "
                             f"--rc-equivariant mlm model): "
                             f"{str(err).splitlines()[0]}") from None
    return model


def classify_loss(model, batch):
    logits = model(batch["input_ids"])                                     # (B, C)
    return F.cross_entropy(logits, batch["labels"]), batch["input_ids"].numel()


def pretrain(args, cfg, split_bed: Path) -> Path:
    """Pretrain a language model on the train regions of ``split_bed`` with pretrain-genome
    (into OUT/pretrain, resumed when it is there); returns its model folder."""
    from mambaseq.pipelines import cli
    out = Path(cfg.out) / "pretrain"
    if (out / "model").is_dir() and (out / "report.json").is_file():
        return out / "model"                                   # finished in an earlier run
    argv = ["pretrain-genome", "--split-bed", str(split_bed), "--out", str(out),
            "--objective", "clm" if args.causal else "mlm",
            "--steps", str(args.pretrain_steps), "--seq-len", str(cfg.seq_len),
            "--batch-size", str(cfg.batch_size), "--d-model", str(cfg.d_model),
            "--n-layer", str(cfg.n_layer), "--d-state", str(args.d_state), "--lr", str(cfg.lr),
            "--warmup-steps", str(cfg.warmup_steps), "--seed", str(cfg.seed),
            "--device", cfg.device, "--eval-every", str(cfg.eval_every or args.pretrain_steps)]
    if args.rc_invariant:
        argv.append("--rc-equivariant")
    if (out / "checkpoints").is_dir():
        argv.append("--resume")
    if args.decompress_gzip:
        argv.append("--decompress-gzip")
    if cli.main(argv) != 0:
        raise ValueError(f"the pretraining step failed (its error is above); its folder: {out}")
    return out / "model"


def check_eval_lengths(data, lengths) -> None:
    """Refuse, before any training, a --eval-lengths value longer than some species' longest
    test region (a draft genome of many contigs has short ones)."""
    longest = data.longest_regions("test")
    for length in lengths:
        for name, n in zip(data.classes, longest):
            if n < length:
                raise ValueError(f"--eval-lengths {length}: species {name!r} has no test region "
                                 f"of {length} bases (its longest: {n}); the longest length "
                                 f"every species allows is {min(longest)}")


def score_lengths(model, data, tokenizer, args, seed) -> dict:
    """Per window length: labels, model predictions and k-mer baseline predictions on
    non-overlapping windows tiling the test regions (the same regions at every length; at
    most --eval-per-class windows per species and length)."""
    out = {}
    for length in args.eval_lengths:
        test_x, test_y = data.tiled_windows("test", length, args.eval_per_class)
        train_x, train_y = data.fixed_windows("train", length, args.baseline_per_class)
        out[length] = {"labels": test_y,
                       "pred": window_probabilities(model, tokenizer, test_x, args.eval_tokens).argmax(1),
                       "baseline_pred": kmer_baseline(train_x, train_y, test_x, k=args.kmer,
                                                      seed=seed)}
    return out


def train_and_score(args, cfg, species, tokenizer, by, fold=None) -> dict:
    """Train one classifier on one split and predict its test windows, with the baseline.

    Writes the split to OUT/split.bed first (on --resume, checks that it is the run's own);
    with --pretrain-steps, pretrains on its train regions and fine-tunes from that model.

    Returns {"classes", "labels" (n,), "pred" (n,), "baseline_pred" (n,), "by_length"
    ({length: {"labels", "pred", "baseline_pred"}} for --eval-lengths), "steps",
    "scored_model", "test_regions", "model" (the scored model), "test_windows" (n strings)}.
    """
    data = SpeciesWindows(species, fractions=args.fractions, by=by, tokenizer=tokenizer,
                          rc_augment=not args.no_rc_augment, seed=cfg.seed, fold=fold,
                          substitution_rate=args.substitution_rate)
    val_x, val_y = data.fixed_windows("val", cfg.seq_len, args.eval_per_class)
    test_x, test_y = data.fixed_windows("test", cfg.seq_len, args.eval_per_class)
    check_eval_lengths(data, args.eval_lengths or [])
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    split_bed = keep_split_bed(Path(cfg.out) / SPLIT_FILE, data.split_table(), cfg.resume,
                               "the FASTA files of --species")
    init_from = pretrain(args, cfg, split_bed) if args.pretrain_steps else args.init_from

    def eval_fn(model):
        probs = window_probabilities(model, tokenizer, val_x, args.eval_tokens)
        return {"val_loss": float(-np.log(probs[np.arange(len(val_y)), val_y]).mean()),
                "val_accuracy": float((probs.argmax(1) == val_y).mean())}

    seed_everything(cfg.seed)
    model = build_model(args, cfg, len(data.classes), tokenizer, init_from)
    summary = train(model, classify_loss, data.get_batch, cfg, eval_fn=eval_fn,
                    assets=model_assets(tokenizer, data.classes))

    # Score the checkpoint with the lowest validation loss when validation ran, else the final model.
    best = Path(summary["out"]) / "checkpoints" / BEST
    scored = load_model(best) if best.is_dir() else model.cpu()
    train_x, train_y = data.fixed_windows("train", cfg.seq_len, args.baseline_per_class)
    return {"classes": data.classes, "labels": test_y,
            "pred": window_probabilities(scored, tokenizer, test_x, args.eval_tokens).argmax(1),
            "by_length": score_lengths(scored, data, tokenizer, args, cfg.seed)
            if args.eval_lengths else {},
            "baseline_pred": kmer_baseline(train_x, train_y, test_x, k=args.kmer, seed=cfg.seed),
            "steps": summary["step"],
            "scored_model": "best validation checkpoint" if best.is_dir() else "final model",
            "model": scored, "test_windows": test_x,
            "test_regions": {c: [f"{Path(p).name}:{w.name}:{w.start}-{w.end}" for p, w in r]
                             for c, r in zip(data.classes, data.regions("test"))}}


def pooled_report(parts: list[dict], args) -> dict:
    """The report over the test windows of every part (one part, or one per fold or seed)."""
    classes = parts[0]["classes"]
    labels = np.concatenate([p["labels"] for p in parts])
    pred = np.concatenate([p["pred"] for p in parts])
    baseline_pred = np.concatenate([p["baseline_pred"] for p in parts])
    report = classification_report(labels, pred, classes)
    baseline = classification_report(labels, baseline_pred, classes)
    report.update(baseline_accuracy=baseline["accuracy"],
                  baseline={"method": f"{args.kmer}-mer frequencies + logistic regression",
                            **baseline},
                  paired_vs_baseline=paired_comparison(labels, pred, baseline_pred),
                  chance=1.0 / len(classes), test_windows=len(labels), seq_len=args.seq_len,
                  steps=parts[0]["steps"], scored_model=parts[0]["scored_model"])
    if parts[0]["by_length"]:
        report["accuracy_vs_length"] = accuracy_by_length([p["by_length"] for p in parts])
    if len(parts) == 1:
        report["test_regions"] = parts[0]["test_regions"]
        return report
    kind = next(iter(parts[0]["part"]))                                # "fold" or "seed"
    per_part = [{**p["part"],
                 "accuracy": float((p["pred"] == p["labels"]).mean()),
                 "baseline_accuracy": float((p["baseline_pred"] == p["labels"]).mean()),
                 "test_regions": p["test_regions"]} for p in parts]
    report.update({f"{kind}s": per_part,
                   f"{kind}s_won": sum(f["accuracy"] > f["baseline_accuracy"] for f in per_part),
                   "accuracy_sd": float(np.std([f["accuracy"] for f in per_part], ddof=1)),
                   "baseline_accuracy_sd": float(np.std([f["baseline_accuracy"]
                                                         for f in per_part], ddof=1))})
    return report


def seed_ensemble(parts: list[dict], tokenizer, args) -> dict:
    """The seeds' classifiers as one ensemble (``ClassifierEnsemble``: mean log-probabilities)
    scored on every seed's test windows (all from the same test regions), beside the k-mer
    baseline's calls on the same windows."""
    ensemble = ClassifierEnsemble([p["model"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    pred = window_probabilities(ensemble, tokenizer, [x for p in parts for x in p["test_windows"]],
                                args.eval_tokens).argmax(1)
    baseline_pred = np.concatenate([p["baseline_pred"] for p in parts])
    return {"members": [p["part"]["seed"] for p in parts],
            "accuracy": float((pred == labels).mean()),
            "baseline_accuracy": float((baseline_pred == labels).mean()),
            "paired_vs_baseline": paired_comparison(labels, pred, baseline_pred),
            "test_windows": len(labels)}


def train_parts(args, cfg, species, tokenizer) -> list[dict]:
    """One classifier (one split), or one per fold (OUT/foldI) or per seed (OUT/seedS)."""
    if args.folds and args.seeds:
        raise ValueError("--folds and --seeds both repeat the training; choose one")
    if args.folds:
        return [{**train_and_score(args, dataclasses.replace(cfg, out=str(Path(cfg.out) / f"fold{i}")),
                                   species, tokenizer, by="fold", fold=(i, args.folds)),
                 "part": {"fold": i}} for i in range(args.folds)]
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds must differ, got {args.seeds}")
        return [{**train_and_score(args, dataclasses.replace(cfg, seed=s,
                                                             out=str(Path(cfg.out) / f"seed{s}")),
                                   species, tokenizer, by=args.split_by),
                 "part": {"seed": s}} for s in args.seeds]
    return [train_and_score(args, cfg, species, tokenizer, by=args.split_by)]


def write_length_results(report: dict, out: Path, per_class: int) -> None:
    """OUT/accuracy_vs_length.json and .png from the report's "accuracy_vs_length" rows."""
    rows = report["accuracy_vs_length"]
    (out / "accuracy_vs_length.json").write_text(json.dumps(
        {"classes": report["classes"], "baseline": report["baseline"]["method"],
         "rows": rows}, indent=2) + "\n")
    parts = len(rows[0]["per_part"])
    plot_accuracy_vs_length(rows, out / "accuracy_vs_length.png",
                            title=f"{len(report['classes'])} species, tiles of the test regions "
                                  f"(at most {per_class} per species and length)"
                                  + (f", {parts} runs" if parts > 1 else ""))


def run(args):
    if args.folds == 1:
        raise ValueError(f"--folds must be 0 (one split) or at least 2, got {args.folds}")
    if args.pretrain_steps and args.init_from:
        raise ValueError("--pretrain-steps and --init-from both give the starting model; "
                         "choose one")
    cfg = TrainConfig.from_args(args)
    tokenizer = CharTokenizer()
    species = {name: [open_sequences(f, decompress_gzip=args.decompress_gzip) for f in files]
               for name, files in parse_species(args.species).items()}
    parts = train_parts(args, cfg, species, tokenizer)
    if not is_main_process():
        return
    report = pooled_report(parts, args)
    if args.seeds and len(parts) > 1:
        report["seed_ensemble"] = seed_ensemble(parts, tokenizer, args)
    out = Path(cfg.out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    what = (f"{args.folds}-fold CV, " if args.folds
            else f"{len(args.seeds)} seeds, " if args.seeds else "")
    plot_confusion(report["confusion_matrix"], report["classes"], out / "confusion.png",
                   title=f"{what}Mamba {report['accuracy']:.1%} | k-mer baseline "
                         f"{report['baseline_accuracy']:.1%}")
    summary = {k: report[k] for k in ("accuracy", "baseline_accuracy", "chance",
                                      "paired_vs_baseline", "per_class_f1")}
    if len(parts) > 1:
        kind = "folds" if args.folds else "seeds"
        summary.update({k: report[k] for k in ("accuracy_sd", "baseline_accuracy_sd",
                                               f"{kind}_won")})
        if "seed_ensemble" in report:
            summary["seed_ensemble_accuracy"] = report["seed_ensemble"]["accuracy"]
    if "accuracy_vs_length" in report:
        write_length_results(report, out, args.eval_per_class)
        summary["accuracy_vs_length"] = {r["length"]: [round(r["accuracy"], 4),
                                                       round(r["baseline_accuracy"], 4)]
                                         for r in report["accuracy_vs_length"]}
    print(json.dumps({**summary, "report": str(out / "report.json")}, indent=2))
