"""Genomics metrics and baselines: classification report (scikit-learn), paired comparison
of two classifiers (McNemar), confusion-matrix plot, k-mer + logistic-regression species
baseline, order-k Markov perplexity baseline, and the conversions between NLL, perplexity
and bits per base."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .tokenizers import CharTokenizer, KmerTokenizer, reverse_complement


def lm_metrics(total_nll: float, tokens: int) -> dict:
    """Summed NLL in nats over ``tokens`` predicted bases -> {"perplexity", "bits_per_base",
    "tokens"} (perplexity = exp(mean NLL), bits = mean NLL / ln 2)."""
    if tokens <= 0:
        raise ValueError("no tokens were scored")
    mean = total_nll / tokens
    return {"perplexity": math.exp(mean), "bits_per_base": mean / math.log(2),
            "tokens": int(tokens)}


def classification_report(y_true, y_pred, classes: list[str]) -> dict:
    """{"accuracy", "per_class_f1" (name -> F1), "confusion_matrix" (rows true, columns
    predicted, as nested lists), "classes"} from integer labels in [0, len(classes))."""
    labels = list(range(len(classes)))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "per_class_f1": {c: float(v) for c, v in zip(classes, f1)},
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            "classes": list(classes)}


def paired_comparison(y_true, pred_a, pred_b) -> dict:
    """Two classifiers on the same test windows: how often each is right where the other is
    wrong, and McNemar's exact test of "equally accurate" (two-sided binomial test on those
    discordant windows).

    The p-value treats windows as independent; overlapping windows cut from one region are
    not, so read it as optimistic.

    Returns:
        {"a_only_correct", "b_only_correct", "mcnemar_p"}.
    """
    from scipy.stats import binomtest

    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    a_only = int(((pred_a == y_true) & (pred_b != y_true)).sum())
    b_only = int(((pred_b == y_true) & (pred_a != y_true)).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only_correct": a_only, "b_only_correct": b_only, "mcnemar_p": float(p)}


def plot_confusion(cm, classes: list[str], path, title: str = "") -> None:
    """Save a confusion matrix (n, n), rows true and columns predicted, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i, j in np.ndindex(cm.shape):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_by_length(parts: list[dict]) -> list[dict]:
    """Pool per-length predictions of several parts (folds or seeds).

    Args:
        parts: each {length: {"labels" (n,), "pred" (n,), "baseline_pred" (n,)[,
            "exact_pred" (n,)]}}.
    Returns:
        one row per length, ascending: {"length", "accuracy", "baseline_accuracy" (pooled
        over all test windows), "accuracy_sd", "baseline_accuracy_sd" (across parts, 0 for
        one part), "per_part" [{"accuracy", "baseline_accuracy", "test_windows"}],
        "test_windows" (pooled over parts: one part's windows when the parts share the test
        regions, e.g. seeds, times the parts)}; with "exact_pred" also "exact_kmer_accuracy"
        and "exact_kmer_accuracy_sd" (and in "per_part").
    """
    keys = (("accuracy", "pred"), ("baseline_accuracy", "baseline_pred"),
            ("exact_kmer_accuracy", "exact_pred"))
    rows = []
    for length in sorted(parts[0]):
        present = [(name, key) for name, key in keys if key in parts[0][length]]
        per_part = [{**{name: float((p[length][key] == p[length]["labels"]).mean())
                        for name, key in present},
                     "test_windows": int(len(p[length]["labels"]))} for p in parts]
        labels = np.concatenate([p[length]["labels"] for p in parts])
        row = {"length": int(length)}
        for name, key in present:
            pred = np.concatenate([p[length][key] for p in parts])
            row[name] = float((pred == labels).mean())
            row[f"{name}_sd"] = (float(np.std([q[name] for q in per_part], ddof=1))
                                 if len(parts) > 1 else 0.0)
        rows.append({**row, "per_part": per_part, "test_windows": int(len(labels))})
    return rows


def plot_accuracy_vs_length(rows: list[dict], path, title: str = "",
                            baseline_name: str = "k-mer baseline") -> None:
    """Accuracy (with its spread across parts) against window length, log-scaled, as PNG;
    the exact-k-mer baseline too when the rows hold it, and each length's test windows (of
    one part) under its tick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["length"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (("accuracy", "Mamba classifier"), ("baseline_accuracy", baseline_name),
                       ("exact_kmer_accuracy", "exact shared k-mers")):
        if key in rows[0]:
            ax.errorbar(lengths, [r[key] for r in rows], yerr=[r[f"{key}_sd"] for r in rows],
                        marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [(f"{n // 1000}k" if n >= 1000 else str(n))
                            + (f"\nn={r['per_part'][0]['test_windows']}" if "test_windows"
                               in r["per_part"][0] else "") for n, r in zip(lengths, rows)])
    ax.set_xlabel("window length (bases)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def kmer_features(seqs: list[str], k: int) -> np.ndarray:
    """(n, 4^k) k-mer frequencies of each sequence, both strands counted (so that the
    features do not depend on which strand a window was read from)."""
    tok = KmerTokenizer(k, stride=1)
    rows = []
    for s in seqs:
        c = tok.counts(s) + tok.counts(reverse_complement(s))
        rows.append(c / max(c.sum(), 1.0))
    return np.stack(rows)


def kmer_baseline(train_seqs, train_labels, test_seqs, k: int = 4, C: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """k-mer frequency + logistic regression classifier (standardised features).

    Returns:
        predicted labels (n_test,) for ``test_seqs``.
    """
    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=C, max_iter=2000, random_state=seed))
    clf.fit(kmer_features(train_seqs, k), np.asarray(train_labels))
    return clf.predict(kmer_features(test_seqs, k))


def markov_nll(train: str, test: str, order: int, alpha: float = 1.0) -> tuple[float, int]:
    """Summed NLL (nats) of the ACGT bases of ``test`` under an order-``order`` Markov
    model fit on ``train`` with add-``alpha`` smoothing; positions whose context or base
    holds N are skipped. Returns (nll, scored bases)."""
    tok = CharTokenizer()

    def contexts(seq):
        b = tok.encode_numpy(seq).astype(np.int64) - 4            # A0 C1 G2 T3 N4
        n = len(b) - order
        if n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cols = np.stack([b[i:i + n] for i in range(order + 1)], 1)   # (n, order + 1)
        keep = (cols < 4).all(1)
        cols = cols[keep]
        ctx = (cols[:, :order] * 4 ** np.arange(order - 1, -1, -1)).sum(1)
        return ctx, cols[:, order]

    # Sparse counts (only contexts seen in train): order 12 would need 4^13 dense cells.
    ctx, nxt = contexts(train)
    pair_keys, pair_counts = np.unique(ctx * 4 + nxt, return_counts=True)
    ctx_keys, ctx_counts = np.unique(ctx, return_counts=True)
    ctx, nxt = contexts(test)
    return float(-(np.log(_lookup(pair_keys, pair_counts, ctx * 4 + nxt) + alpha)
                   - np.log(_lookup(ctx_keys, ctx_counts, ctx) + 4 * alpha)).sum()), int(len(nxt))


def sorted_lookup(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each q of ``query``: (its index in ``keys`` where held, whether ``keys`` holds it);
    ``keys`` sorted and unique. O(len(query) log len(keys)), no sort of ``keys``."""
    idx = np.searchsorted(keys, query).clip(max=max(len(keys) - 1, 0))
    hit = keys[idx] == query if len(keys) else np.zeros(len(query), bool)
    return idx, hit


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """counts[keys == q] for each q (0 where absent); ``keys`` sorted."""
    idx, hit = sorted_lookup(keys, query)
    return np.where(hit, counts[idx] if len(keys) else 0, 0).astype(np.float64)


def best_markov_perplexity(train: str, test: str, max_order: int = 12) -> dict:
    """The best order-k Markov model (k = 0..max_order) on ``test``: {"order", "perplexity",
    "bits_per_base", "tokens"} (an oracle choice of k: a baseline to beat, not a model)."""
    best = None
    for order in range(max_order + 1):
        nll, n = markov_nll(train, test, order)
        m = lm_metrics(nll, n)
        if best is None or m["perplexity"] < best["perplexity"]:
            best = {"order": order, **m}
    return best


@torch.no_grad()
def lm_nll(model, ids: torch.Tensor, chunk_len: int = 2 ** 14,
           score_ids: tuple[int, ...] = CharTokenizer.base_ids) -> tuple[float, int]:
    """Summed next-token NLL (nats) of one sequence under a causal ``core.MambaLM``.

    ``ids`` (L,) starts with [BOS]; token t+1 is scored from tokens <= t, in chunks of
    ``chunk_len`` that pass the recurrent state (exactly one whole pass, in bounded
    memory). Only targets in ``score_ids`` (the ids of A C G T by default) count: an N is not a base
    the model can be right or wrong about.

    Returns:
        (nll, number of scored targets)
    """
    state, total, count = None, 0.0, 0
    scored = torch.tensor(score_ids, device=ids.device)
    for start in range(0, len(ids) - 1, chunk_len):
        inputs = ids[start:start + chunk_len]                              # (chunk,)
        targets = ids[start + 1:start + 1 + chunk_len]                     # (chunk,)
        logits, state = model(inputs[None, :len(targets)], state=state, return_state=True)
        keep = torch.isin(targets, scored)
        nll = F.cross_entropy(logits[0].float(), targets, reduction="none")
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total, count
