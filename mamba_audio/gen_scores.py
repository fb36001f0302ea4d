"""The scores the Mamba paper (after SaShiMi and DiffWave) gives generated SC09 clips, all
read off a word classifier trained on real clips (``mamba_audio.classifier``).

Dimension names: N clips, K classes, F features. ``probs`` are (N, K) class probabilities
p(y|x), one row per clip; ``feats`` are (N, F) penultimate features.

- Inception Score, IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of the rows: high when each
  clip is confidently one word and all words occur (at most K). Salimans et al. 2016.
- modified IS, mIS = exp(E_{x, x'} KL(p(y|x) || p(y|x'))) over pairs of clips: high also when
  clips of one word differ from one another (within-class diversity). Gurumurthy et al. 2017.
- AM score = KL(p_ref(y) || p(y)) + E_x H(p(y|x)), p_ref the classifier's mean prediction on
  its real training clips: low (0 at best) when the words occur as often as in the real data
  and each clip is confidently one word. Zhou et al. 2018.
- FID = |mu - mu_ref|^2 + tr(S + S_ref - 2 (S S_ref)^(1/2)), the Frechet distance between
  Gaussians fit to the features of the clips and of the real training clips: 0 at best.
  Heusel et al. 2017.

>>> probs = torch.eye(10, dtype=torch.float64)           # 10 clips, each surely its own word
>>> round(inception_score(probs), 6)                     # K = 10: the most there is
10.0
>>> round(inception_score(torch.full((10, 10), 0.1, dtype=torch.float64)), 6)  # all unsure
1.0
"""
from __future__ import annotations

import math

import torch
import torchaudio

EPS = 1e-12  # probabilities are clamped here before a log (a one-hot row has exact zeros)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.double().clamp_min(EPS))


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got shape {tuple(probs.shape)}")
    sums = probs.double().sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError("probs rows must sum to 1 (pass softmax probabilities, not logits)")
    return probs.double()


def inception_score(probs: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of (N, K) probabilities; between 1 and K."""
    p = _check_probs(probs)
    marginal = p.mean(0, keepdim=True)                                         # (1, K)
    kl = (p * (_log(p) - _log(marginal))).sum(-1)                              # (N,)
    return math.exp(float(kl.mean()))


def modified_inception_score(probs: torch.Tensor) -> float:
    """exp(E_{i, j} KL(p(y|x_i) || p(y|x_j))) over all ordered pairs of rows (i == j too) of
    (N, K) probabilities; 1 when all rows are equal."""
    p = _check_probs(probs)
    log_p = _log(p)                                                            # (N, K)
    # E_ij sum_k p_ik (log p_ik - log p_jk) = E_i sum_k p_ik log p_ik - sum_k E_i p_ik E_j log p_jk
    mean_kl = (p * log_p).sum(-1).mean() - (p.mean(0) * log_p.mean(0)).sum()
    return math.exp(float(mean_kl))


def am_score(probs: torch.Tensor, reference_marginal: torch.Tensor) -> float:
    """KL(p_ref(y) || p(y)) + E_x H(p(y|x)) of (N, K) probabilities against the (K,) class
    marginal of the real data; 0 at best."""
    p = _check_probs(probs)
    ref = reference_marginal.double()
    if ref.shape != p.shape[1:]:
        raise ValueError(f"reference marginal has shape {tuple(ref.shape)}, probs have "
                         f"{p.shape[1]} classes")
    marginal = p.mean(0)                                                       # (K,)
    kl = (ref * (_log(ref) - _log(marginal))).sum()
    entropy = -(p * _log(p)).sum(-1).mean()
    return float(kl + entropy)


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and covariance (F, F) of (N, F) features (N >= 2)."""
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {tuple(feats.shape)}")
    feats = feats.double()
    return feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], feats.shape[1])


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor,
                     cov_b: torch.Tensor) -> float:
    """|mean_a - mean_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)): the Frechet (2-Wasserstein)
    distance squared between two Gaussians given by (F,) means and (F, F) covariances."""
    a, b = cov_a.double(), cov_b.double()
    # tr (A B)^(1/2) = tr (A^(1/2) B A^(1/2))^(1/2), and the inner matrix is symmetric PSD, so
    # symmetric eigendecompositions give it without the complex rounding (or the warnings on
    # singular covariances, fewer clips than features) of a general matrix square root.
    w, v = torch.linalg.eigh(a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T                                 # (F, F)
    inner = torch.linalg.eigvalsh(root_a @ b @ root_a).clamp_min(0)            # (F,)
    diff = (mean_a - mean_b).double()
    return float(diff @ diff + a.trace() + b.trace() - 2 * inner.sqrt().sum())


def generation_scores(probs: torch.Tensor, feats: torch.Tensor, reference_marginal: torch.Tensor,
                      reference_mean: torch.Tensor, reference_cov: torch.Tensor) -> dict:
    """All four scores of a set of clips from its classifier outputs.

    Args:
        probs (Tensor): (N, K) class probabilities of the clips.
        feats (Tensor): (N, F) penultimate features of the clips.
        reference_marginal, reference_mean, reference_cov (Tensor): (K,), (F,), (F, F) of
            the real training clips (``WordClassifier.ref_*``).

    Returns:
        {"clips", "inception_score", "modified_inception_score", "am_score", "fid"}.
    """
    mean, cov = feature_stats(feats)
    return {"clips": len(probs),
            "inception_score": inception_score(probs),
            "modified_inception_score": modified_inception_score(probs),
            "am_score": am_score(probs, reference_marginal),
            "fid": frechet_distance(mean, cov, reference_mean, reference_cov)}


def score_clips(classifier, wavs: torch.Tensor, sample_rate: int | None = None,
                ids: torch.Tensor | None = None, group_size: int = 0, seed: int = 0) -> dict:
    """``generation_scores`` of (N, L) waveforms under a trained ``WordClassifier``.

    Args:
        classifier (WordClassifier): trained, with its reference statistics fit.
        wavs (Tensor): (N, L) waveforms at ``sample_rate`` (resampled to the classifier's
            rate when it differs; None means the classifier's).
        ids (Tensor, optional): (N,) true class ids: adds ``accuracy``.
        group_size (int, 0): also score disjoint random groups of this many clips and
            report each score's mean and standard deviation over them (``groups``): the
            scores depend on the number of clips (FID most), so real clips are compared
            with as many generated clips this way.
        seed (int, 0): seed of the random grouping.

    Returns:
        the ``generation_scores`` dict, plus ``word_shares`` (share of clips given each
        word) and, as asked, ``accuracy`` and ``groups``.
    """
    rate = classifier.config.sample_rate
    if sample_rate is not None and sample_rate != rate:
        wavs = torchaudio.functional.resample(wavs, sample_rate, rate)
    probs, feats = classifier.predict(wavs)
    reference = (classifier.ref_class_marginal, classifier.ref_feature_mean,
                 classifier.ref_feature_cov)
    shares = torch.bincount(probs.argmax(-1), minlength=probs.shape[1]).double() / len(probs)
    result = {**generation_scores(probs, feats, *reference),
              "word_shares": {w: round(float(s), 4) for w, s in zip(classifier.labels, shares)}}
    if ids is not None:
        result["accuracy"] = float((probs.argmax(-1) == ids).double().mean())
    if group_size:
        if not 2 <= group_size <= len(probs):
            raise ValueError(f"group size {group_size} must be between 2 and the number of "
                             f"clips, {len(probs)}")
        order = torch.randperm(len(probs), generator=torch.Generator().manual_seed(seed))
        groups = [generation_scores(probs[g], feats[g], *reference)
                  for g in order[:len(order) // group_size * group_size].view(-1, group_size)]
        result["groups"] = {"size": group_size, "count": len(groups), **{
            f"{key}_{stat}": float(getattr(torch.tensor([g[key] for g in groups],
                                                        dtype=torch.float64), stat)())
            for key in ("inception_score", "modified_inception_score", "am_score", "fid")
            for stat in ("mean", "std")}}
    return result
