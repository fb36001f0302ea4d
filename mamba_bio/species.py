"""Species classification of DNA windows: the classifier, its loss and validation, and what
its test predictions make: the pooled report beside a k-mer baseline, the seeds' ensemble and
accuracy against window length.

    species = parse_species(["human=hs.fa", "chimp=pt.fa,pt2.fa"])  # {"human": ["hs.fa"], ...}
    model = build_classifier(tokenizer, n_classes=2, d_model=64, n_layer=2)
    loss, tokens = classify_loss(model, batch)           # batch: input_ids (B, L), labels (B,)
    report = pooled_report([part], kmer=3, seq_len=1000)  # part: one classifier's PartScores

Dimension names: n test windows, B batch, L window length, C classes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mambaseq import core

from .datasets import SpeciesWindows
from .kmer_match import ExactKmerMatch
from .metrics import (accuracy_by_length, classification_report, kmer_baseline,
                      paired_comparison, plot_accuracy_vs_length)
from .predict import ClassifierEnsemble, window_probabilities
from .tokenizers import CharTokenizer


def parse_species(items: list[str]) -> dict[str, list[str]]:
    """``["human=a.fa,b.fa", ...]`` -> ``{"human": ["a.fa", "b.fa"], ...}`` (order kept).

    Raises:
        ValueError: an item that is not NAME=FASTA[,FASTA...], or a name given twice (the
            message is the reason alone: "expects NAME=FASTA..., got 'x'").
    """
    species = {}
    for item in items:
        name, sep, files = item.partition("=")
        if not sep or not name or not files:
            raise ValueError(f"expects NAME=FASTA[,FASTA...], got {item!r}")
        if name in species:
            raise ValueError(f"names species {name!r} twice")
        species[name] = [f for f in files.split(",") if f]
    return species


def build_classifier(tokenizer: CharTokenizer, n_classes: int, *, d_model: int, n_layer: int,
                     d_state: int = 16, pooling: str = "mean", causal: bool = False,
                     rc_invariant: bool = False, ngram: int = 0, rc_augment: bool = True,
                     strand_average: bool = True) -> core.SequenceClassifier:
    """A species classifier: bidirectional (or ``causal``), optionally RC-invariant, with
    ``ngram``-mer embeddings added to the base embedding when ``ngram`` > 0.

    A model trained on both strands (``rc_augment``) scores a window and its reverse
    complement and averages their class log-probabilities, unless ``strand_average`` is off
    (an RC-invariant model needs no averaging); the rule is saved with the model, so that
    prediction does the same.
    """
    averaged = rc_augment and strand_average and not rc_invariant
    return core.SequenceClassifier(core.SequenceClassifierConfig(
        vocab_size=tokenizer.vocab_size, d_model=d_model, n_layer=n_layer,
        num_classes=n_classes, pooling=pooling, bidirectional=not causal,
        rc_equivariant=rc_invariant,
        complement=tokenizer.complement_map.tolist() if rc_invariant or averaged else None,
        d_state=d_state, ngram=ngram, ngram_letters=tokenizer.base_letters if ngram else None,
        strand_average=averaged))


def copy_pretrained(model: core.SequenceClassifier, pretrained: torch.nn.Module,
                    where: str) -> core.SequenceClassifier:
    """Start ``model`` from the embedding and backbone of ``pretrained`` (a genome language
    model: a causal ``MambaLM`` for a causal classifier, a ``MaskedLM`` otherwise, an
    rc-equivariant one for an rc-invariant classifier). With ngram embeddings the pretrained
    base embedding becomes their token part. Returns ``model``.

    Raises:
        ValueError: the shapes or the kind do not fit, naming ``where`` (its folder).
    """
    try:
        target = model.embedding.token if model.config.ngram else model.embedding
        target.load_state_dict(pretrained.embedding.state_dict())
        model.backbone.load_state_dict(pretrained.backbone.state_dict())
    except (RuntimeError, AttributeError) as err:
        raise ValueError(f"{where}: its {type(pretrained).__name__} does not fit this "
                         f"classifier (same d_model/n_layer/d_state, causal for a clm model, "
                         f"rc_invariant for an rc_equivariant mlm model): "
                         f"{str(err).splitlines()[0]}") from None
    return model


def classify_loss(model, batch):
    """Cross-entropy of the class logits (B, C) of ``batch["input_ids"]`` (B, L) against
    ``batch["labels"]`` (B,); returns (mean loss, B * L)."""
    logits = model(batch["input_ids"])                                     # (B, C)
    return F.cross_entropy(logits, batch["labels"]), batch["input_ids"].numel()


def classifier_eval(windows: list[str], labels: np.ndarray, tokenizer: CharTokenizer,
                    tokens_per_batch: int = 64_000):
    """The validation function of a classifier on fixed windows (n strings) and their labels
    (n,): ``eval_fn(model) -> {"val_loss", "val_accuracy"}``."""
    def eval_fn(model):
        probs = window_probabilities(model, tokenizer, windows, tokens_per_batch)   # (n, C)
        return {"val_loss": float(-np.log(probs[np.arange(len(labels)), labels]).mean()),
                "val_accuracy": float((probs.argmax(1) == labels).mean())}
    return eval_fn


def check_eval_lengths(data: SpeciesWindows, eval_lengths: list[int]) -> None:
    """Refuse, before any training, a length longer than some species' longest test region
    (a draft genome of many contigs has short ones).

    Raises:
        ValueError: naming the length, the species, its longest region and the longest
            length every species allows.
    """
    longest = data.longest_regions("test")
    for length in eval_lengths:
        for name, n in zip(data.classes, longest):
            if n < length:
                raise ValueError(f"eval_lengths {length}: species {name!r} has no test region "
                                 f"of {length} bases (its longest: {n}); the longest length "
                                 f"every species allows is {min(longest)}")


def region_sequences(data: SpeciesWindows, split: str = "train") -> list[list[str]]:
    """Per class (label order), the bases of each of its ``split`` regions: what the
    exact-k-mer baseline indexes."""
    return [[s.source.fetch(r.name, r.start, r.end) for s in pooled.samplers for r in s.regions]
            for pooled in data.samplers[split]]


def exact_kmer_method(match: ExactKmerMatch) -> str:
    """The exact-k-mer baseline in words, for reports."""
    return (f"exact shared canonical {match.k}-mers with each class's training regions"
            + (" (k-mers of one class only)" if match.unique else "") + ", most shared wins")


def score_lengths(model, data: SpeciesWindows, tokenizer: CharTokenizer, lengths: list[int], *,
                  per_class: int, baseline_per_class: int, kmer: int, seed: int,
                  tokens_per_batch: int = 64_000,
                  exact: ExactKmerMatch | None = None) -> dict[int, dict]:
    """Per window length: labels, model predictions and k-mer baseline predictions on
    non-overlapping windows tiling the test regions (the same regions at every length; at
    most ``per_class`` windows per species and length); the baseline is fit on
    ``baseline_per_class`` training windows per species of that length. With ``exact`` (an
    ``ExactKmerMatch`` fit on the training regions), its calls on the same windows too.

    Returns:
        {length: {"labels" (n,), "pred" (n,), "baseline_pred" (n,)[, "exact_pred" (n,)]}},
        the form ``metrics.accuracy_by_length`` pools.
    """
    out = {}
    for length in lengths:
        test_x, test_y = data.tiled_windows("test", length, per_class)
        train_x, train_y = data.fixed_windows("train", length, baseline_per_class)
        out[length] = {"labels": test_y,
                       "pred": window_probabilities(model, tokenizer, test_x,
                                                    tokens_per_batch).argmax(1),
                       "baseline_pred": kmer_baseline(train_x, train_y, test_x, k=kmer,
                                                      seed=seed)}
        if exact is not None:
            out[length]["exact_pred"] = exact.predict(test_x)
    return out


@dataclass
class PartScores:
    """One trained classifier's calls on its test windows (one split, one fold or one seed),
    beside the k-mer baseline's on the same windows.

    Attributes:
        classes: class names, in label order.
        labels, pred, baseline_pred: (n,) true labels, the model's and the baseline's calls.
        windows: the n test windows (strings), for scoring them again (an ensemble).
        model: the scored model (the best validation checkpoint, or the final model).
        scored_model: which of the two it is, in words.
        steps: optimizer steps the model was trained for.
        test_regions: per class, "file:record:start-end" of its test regions.
        by_length: ``score_lengths``' output ({} when no lengths were asked for).
        exact_pred, exact_method: (n,) the exact-k-mer baseline's calls on the test windows
            and its description (None: not run).
        fold, seed: which part of a run of several this is (None: not that kind).
        model_dir: the run folder's model/ of this classifier.
    """

    classes: list[str]
    labels: np.ndarray
    pred: np.ndarray
    baseline_pred: np.ndarray
    windows: list[str]
    model: torch.nn.Module
    scored_model: str
    steps: int
    test_regions: dict[str, list[str]]
    by_length: dict[int, dict] = field(default_factory=dict)
    fold: int | None = None
    seed: int | None = None
    model_dir: Path | None = None
    exact_pred: np.ndarray | None = None
    exact_method: str | None = None

    @property
    def part(self) -> dict:
        """{"fold": i} or {"seed": s} (what the report names the part by), or {}."""
        return ({"fold": self.fold} if self.fold is not None else
                {"seed": self.seed} if self.seed is not None else {})


def pooled_report(parts: list[PartScores], *, kmer: int, seq_len: int) -> dict:
    """The report over the test windows of every part (one part, or one per fold or seed).

    Returns:
        ``metrics.classification_report`` of the pooled calls ("accuracy", "per_class_f1",
        "confusion_matrix", "classes", ...) plus "baseline_accuracy", "baseline",
        "paired_vs_baseline", "chance", "test_windows", "seq_len", "steps", "scored_model",
        "accuracy_vs_length" (when scored at several lengths), "exact_kmer_accuracy",
        "exact_kmer" and "paired_vs_exact_kmer" (when the exact-k-mer baseline ran); for one
        part its "test_regions", for several "folds"/"seeds" (each part's accuracies and regions),
        "folds_won"/"seeds_won", "accuracy_sd" and "baseline_accuracy_sd".
    """
    classes = parts[0].classes
    labels = np.concatenate([p.labels for p in parts])
    pred = np.concatenate([p.pred for p in parts])
    baseline_pred = np.concatenate([p.baseline_pred for p in parts])
    report = classification_report(labels, pred, classes)
    baseline = classification_report(labels, baseline_pred, classes)
    report.update(baseline_accuracy=baseline["accuracy"],
                  baseline={"method": f"{kmer}-mer frequencies + logistic regression",
                            **baseline},
                  paired_vs_baseline=paired_comparison(labels, pred, baseline_pred),
                  chance=1.0 / len(classes), test_windows=len(labels), seq_len=seq_len,
                  steps=parts[0].steps, scored_model=parts[0].scored_model)
    if parts[0].exact_pred is not None:
        exact_pred = np.concatenate([p.exact_pred for p in parts])
        exact = classification_report(labels, exact_pred, classes)
        report.update(exact_kmer_accuracy=exact["accuracy"],
                      exact_kmer={"method": parts[0].exact_method, **exact},
                      paired_vs_exact_kmer=paired_comparison(labels, pred, exact_pred))
    if parts[0].by_length:
        report["accuracy_vs_length"] = accuracy_by_length([p.by_length for p in parts])
    if len(parts) == 1:
        report["test_regions"] = parts[0].test_regions
        return report
    kind = next(iter(parts[0].part))                                   # "fold" or "seed"
    per_part = [{**p.part,
                 "accuracy": float((p.pred == p.labels).mean()),
                 "baseline_accuracy": float((p.baseline_pred == p.labels).mean()),
                 **({"exact_kmer_accuracy": float((p.exact_pred == p.labels).mean())}
                    if p.exact_pred is not None else {}),
                 "test_regions": p.test_regions} for p in parts]
    report.update({f"{kind}s": per_part,
                   f"{kind}s_won": sum(f["accuracy"] > f["baseline_accuracy"] for f in per_part),
                   "accuracy_sd": float(np.std([f["accuracy"] for f in per_part], ddof=1)),
                   "baseline_accuracy_sd": float(np.std([f["baseline_accuracy"]
                                                         for f in per_part], ddof=1))})
    return report


def seed_ensemble(parts: list[PartScores], tokenizer: CharTokenizer,
                  tokens_per_batch: int = 64_000) -> dict:
    """The seeds' classifiers as one ensemble (``ClassifierEnsemble``: mean log-probabilities)
    scored on every seed's test windows (all from the same test regions), beside the k-mer
    baseline's calls on the same windows.

    Returns:
        {"members" (the seeds), "accuracy", "baseline_accuracy", "paired_vs_baseline",
        "test_windows"}.
    """
    ensemble = ClassifierEnsemble([p.model for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    pred = window_probabilities(ensemble, tokenizer, [x for p in parts for x in p.windows],
                                tokens_per_batch).argmax(1)
    baseline_pred = np.concatenate([p.baseline_pred for p in parts])
    return {"members": [p.seed for p in parts],
            "accuracy": float((pred == labels).mean()),
            "baseline_accuracy": float((baseline_pred == labels).mean()),
            "paired_vs_baseline": paired_comparison(labels, pred, baseline_pred),
            "test_windows": len(labels)}


def write_accuracy_vs_length(report: dict, out: Path, per_class: int) -> None:
    """``out``/accuracy_vs_length.json and .png from the report's "accuracy_vs_length" rows
    (``per_class``: the most windows per species and length, for the title)."""
    rows = report["accuracy_vs_length"]
    exact = {"exact_kmer": report["exact_kmer"]["method"]} if "exact_kmer" in report else {}
    (out / "accuracy_vs_length.json").write_text(json.dumps(
        {"classes": report["classes"], "baseline": report["baseline"]["method"], **exact,
         "rows": rows}, indent=2) + "\n")
    parts = len(rows[0]["per_part"])
    plot_accuracy_vs_length(rows, out / "accuracy_vs_length.png",
                            title=f"{len(report['classes'])} species, tiles of the test regions "
                                  f"(at most {per_class} per species and length)"
                                  + (f", {parts} runs" if parts > 1 else ""))
