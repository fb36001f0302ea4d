"""Figures of audio clips (matplotlib, imported only when a figure is drawn).

    plot_spectrograms([("generated", "gen/sample_000.wav"), ("real", "fsdd/0_theo_0.wav")],
                      8000, "gen/spectrograms.png")
"""
from __future__ import annotations

from pathlib import Path

from .io import load_audio


def plot_spectrograms(clips: list[tuple[str, str | Path]], sample_rate: int, out_png) -> Path:
    """One spectrogram per (title, audio file), side by side, each file read at
    ``sample_rate``; written to ``out_png``, which is returned."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(clips), figsize=(4 * len(clips), 3), squeeze=False)
    for ax, (title, path) in zip(axes[0], clips):
        wav, _ = load_audio(path, sample_rate=sample_rate)
        nfft = 256 if len(wav) >= 1024 else 32          # a very short clip: coarser bins
        ax.specgram(wav.numpy(), Fs=sample_rate, NFFT=nfft, noverlap=nfft * 3 // 4,
                    cmap="magma")
        ax.set_title(f"{title}: {Path(path).name}", fontsize=8)
        ax.set_xlabel("s")
    axes[0][0].set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
