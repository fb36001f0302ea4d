"""A small spoken-word classifier on log-mel features: the judge of generated clips.

The Mamba paper (after SaShiMi and DiffWave) scores generated SC09 clips with a classifier
trained on the real clips: Inception Score and its relatives from its predicted
probabilities, FID from its penultimate features (``mamba_audio.gen_scores``). This is that
classifier, small enough to train on a CPU in minutes.

Dimension names: B batch, L samples (``clip_samples``), S STFT bins, M mel bands, T frames,
K classes, F penultimate features.

    waveform (B, L) -> log-mel (B, 1, M, T), standardised per clip -> 4 x [conv 3x3, batch
    norm, ReLU, max-pool 2] -> mean over (M, T) -> Linear + ReLU: features (B, F)
    -> dropout -> Linear: logits (B, K)

Beside its weights it keeps what the scores compare against, measured on its real training
clips after training (``fit_reference``): the mean predicted class distribution (AM score)
and the mean and covariance of the features (FID). They are buffers, so they travel with
``save_pretrained`` / ``from_pretrained``.

>>> clf = WordClassifier(WordClassifierConfig(labels=["yes", "no"], sample_rate=16000))
>>> clf(torch.zeros(4, 16000)).shape                             # (B, K)
torch.Size([4, 2])
>>> clf.features(torch.zeros(4, 16000)).shape                    # (B, F)
torch.Size([4, 64])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torchaudio

from mambaseq.core.model_folder import PretrainedMixin, register_model_class


@dataclass(kw_only=True)
class WordClassifierConfig:
    """Features, architecture and labels of a ``WordClassifier`` (its config.json)."""
    labels: list                                 # class names, index = class id (K of them)
    sample_rate: int = 16000                     # Hz of the input waveforms
    clip_seconds: float = 1.0                    # inputs are zero-padded / cut to this length
    n_mels: int = 40                             # M
    win_ms: float = 30.0                         # STFT window
    hop_ms: float = 10.0                         # STFT hop
    channels: list = field(default_factory=lambda: [16, 32, 64, 64])  # conv widths
    n_features: int = 64                         # F, the penultimate width (FID features)
    dropout: float = 0.2

    def __post_init__(self):
        if len(self.labels) < 2:
            raise ValueError(f"a word classifier needs at least 2 labels, got "
                             f"{list(self.labels)}")
        self.labels = list(self.labels)
        self.sample_rate, self.clip_seconds = int(self.sample_rate), float(self.clip_seconds)
        self.channels = [int(c) for c in self.channels]


@register_model_class
class WordClassifier(PretrainedMixin, nn.Module):
    """Spoken-word classifier on log-mel spectrograms of fixed-length clips.

    Args:
        config (WordClassifierConfig): see there.
    """

    config_class = WordClassifierConfig

    def __init__(self, config: WordClassifierConfig):
        super().__init__(config)
        sample_rate, n_mels, n_features = config.sample_rate, config.n_mels, config.n_features
        self.win = int(round(sample_rate * config.win_ms / 1000))
        self.hop = int(round(sample_rate * config.hop_ms / 1000))
        # Derived from the config, so not saved (persistent=False) but rebuilt on load.
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.register_buffer("mel_fbanks", torchaudio.functional.melscale_fbanks(
            self.win // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate), persistent=False)
        blocks, width = [], 1
        for c in config.channels:
            blocks += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            width = c
        self.conv = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Linear(width, n_features), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(n_features, len(config.labels))
        k = len(config.labels)
        # Reference statistics of the real training clips (fit_reference); until then a
        # uniform class marginal and standard-normal features.
        self.register_buffer("ref_class_marginal", torch.full((k,), 1.0 / k))        # (K,)
        self.register_buffer("ref_feature_mean", torch.zeros(n_features))            # (F,)
        self.register_buffer("ref_feature_cov", torch.eye(n_features))               # (F, F)

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def clip_samples(self) -> int:
        """L: the input length every waveform is padded or cut to."""
        return int(round(self.config.sample_rate * self.config.clip_seconds))

    def fit_length(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., any L) -> (..., clip_samples): zero-pad the end or keep the start."""
        n = self.clip_samples
        if wav.shape[-1] >= n:
            return wav[..., :n]
        return torch.nn.functional.pad(wav, (0, n - wav.shape[-1]))

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, 1, M, T) log-mel, standardised per clip (so that the level
        of a recording does not matter)."""
        power = torchaudio.functional.spectrogram(
            self.fit_length(wav).float(), pad=0, window=self.window, n_fft=self.win,
            hop_length=self.hop, win_length=self.win, power=2.0, normalized=False)  # (B, S, T)
        mel = torch.log((power.transpose(1, 2) @ self.mel_fbanks).transpose(1, 2) + 1e-6)
        #                                                                        (B, M, T)
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True)
                                                             + 1e-5)
        return mel.unsqueeze(1)                                                    # (B, 1, M, T)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, F) penultimate features (what FID compares)."""
        return self.embed(self.conv(self.log_mel(wav)).mean(dim=(2, 3)))           # (B, F)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, K) logits."""
        return self.out(self.dropout(self.features(wav)))

    @torch.no_grad()
    def predict(self, wavs: torch.Tensor, batch_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and features of many clips, in eval mode, batch by batch.

        Args:
            wavs (Tensor): (N, L) waveforms (any L: padded or cut to ``clip_samples``).
            batch_size (int, 256): clips per forward.

        Returns:
            (probabilities (N, K) float64, features (N, F) float64).
        """
        was_training = self.training
        self.eval()
        probs, feats = [], []
        device = self.out.weight.device
        for start in range(0, len(wavs), batch_size):
            f = self.features(wavs[start:start + batch_size].to(device))
            # softmax in float64: float32 rounds a confident row's small entries to exactly 0,
            # which would cap the KL terms of the modified Inception Score
            probs.append(torch.softmax(self.out(f).double(), dim=-1).cpu())
            feats.append(f.double().cpu())
        self.train(was_training)
        return torch.cat(probs), torch.cat(feats)

    def fit_reference(self, wavs: torch.Tensor) -> None:
        """Store the class marginal and feature statistics of ``wavs`` (N, L), the real
        training clips, as the reference of the AM score and FID."""
        probs, feats = self.predict(wavs)
        self.ref_class_marginal.copy_(probs.mean(0))
        self.ref_feature_mean.copy_(feats.mean(0))
        self.ref_feature_cov.copy_(torch.cov(feats.T))
