"""generate-audio: sample waveforms from a trained model, one recurrent step per sample.

    mambaseq generate-audio --model runs/audio/model --n 16 --seconds 1 --out gen/ \
        [--prime clip.wav --prime-seconds 0.25] [--temperature 1 --top-p 0.95] [--seed 0]

The ``--n`` clips are generated as one batch (every step advances all of them; priming too),
under one progress bar with the samples/s. Writes ``<out>/sample_000.wav``... at the
model's rate, ``<out>/spectrograms.png`` (the first clips, beside ``--compare`` real clips
when given), and prints one JSON object with the speed (``samples_per_second``: generated
samples of all clips per second of generation; ``samples_per_second_with_priming``: every
sample stepped, priming included, per second of the whole run) and
``slowdown_last_vs_first``, the time per step of the last 1000 steps over the first 1000
(about 1: the cost of a step does not grow with the length generated). ``--score
CLASSIFIER_DIR`` (a model written by train-word-classifier) adds ``scores``: the generated
clips' Inception Score, modified IS, AM score and FID (``mamba_audio.gen_scores``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mambaseq.mamba_audio.classifier import WordClassifier
from mambaseq.mamba_audio.gen_scores import score_clips
from mambaseq.mamba_audio.io import load_audio
from mambaseq.mamba_audio.metrics import clip_stats
from mambaseq.mamba_audio.model import AudioLM
from mambaseq.mamba_audio.sampler import generate, save_clips

from .distributed import resolve_device
from .options import (non_negative_float, non_negative_int, positive_float, positive_int,
                      probability_mass, seed_int)

HELP = "generate audio clips from a trained model (wav files + samples/s)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", metavar="DIR", required=True,
                        help="a model directory written by train-audio (<out>/model)")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the wavs")
    parser.add_argument("--n", "--n-clips", dest="n", type=positive_int, default=16,
                        help="clips generated together (one batch)")
    parser.add_argument("--seconds", type=positive_float, default=1.0,
                        help="length of each clip")
    parser.add_argument("--prime", metavar="FILE", default=None,
                        help="audio file whose start primes every clip (kept in the output)")
    parser.add_argument("--prime-seconds", type=positive_float, default=0.25,
                        help="how much of --prime to use")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=positive_int, default=None,
                        help="keep the k likeliest classes")
    parser.add_argument("--top-p", type=probability_mass, default=None,
                        help="nucleus sampling mass")
    parser.add_argument("--seed", type=seed_int, default=0, help="same seed, same clips")
    parser.add_argument("--compare", metavar="FILE", nargs="*", default=(),
                        help="real clips drawn beside the generated ones in spectrograms.png")
    parser.add_argument("--score", metavar="CLASSIFIER_DIR", default=None,
                        help="a word classifier written by train-word-classifier: print the "
                             "generated clips' Inception Score, modified IS, AM score and FID")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=non_negative_int, default=1,
                        help="CPU threads for torch; a step's ops are tiny, so 1 is usually "
                             "fastest (0 = torch's default)")


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = AudioLM.from_pretrained(args.model, device=device).eval()
    judge = WordClassifier.from_pretrained(args.score) if args.score else None  # fail early
    rate = model.sample_rate
    prime = None
    if args.prime:
        wav, _ = load_audio(args.prime, sample_rate=rate, normalize="peak")
        prime = model.quantizer.encode(wav[:max(1, int(args.prime_seconds * rate))])
    n_samples = int(round(args.seconds * rate))
    result = generate(model, args.n, n_samples, args.temperature, args.top_k, args.top_p,
                      prime=prime, seed=args.seed)
    paths = save_clips(result.tokens, model.quantizer, rate, args.out)
    plot_spectrograms([("generated", p) for p in paths[:2]]
                      + [("real", p) for p in args.compare], rate, paths[0].parent /
                      "spectrograms.png")
    steps = result.step_seconds
    window = min(1000, len(steps) // 2) or 1
    generated = model.quantizer.decode(result.tokens[:, result.n_prime:])      # (B, L) float
    print(json.dumps({
        "files": [str(p) for p in paths], "sample_rate": rate, "samples": n_samples,
        "primed_samples": result.n_prime, "batch": args.n,
        "samples_per_second": round(result.samples_per_second, 1),
        "samples_per_second_with_priming": round(result.samples_per_second_with_priming, 1),
        "slowdown_last_vs_first": round(float(steps[-window:].mean() / steps[:window].mean()),
                                        3),
        "generated": median_stats(list(generated)),
        **({"real": median_stats([load_audio(p, sample_rate=rate, normalize="peak")[0]
                                  for p in args.compare])} if args.compare else {}),
        **({"scores": score_clips(judge, generated.float().cpu(), rate)} if judge else {})}))


def median_stats(clips: list[torch.Tensor]) -> dict:
    """Median over ``clips`` ((L,) waveforms) of each ``clip_stats`` figure: the level,
    clipping, silence and noisiness of a batch at a glance."""
    rows = [clip_stats(c) for c in clips]
    return {k: round(float(torch.tensor([r[k] for r in rows]).median()), 5) for k in rows[0]}


def plot_spectrograms(clips: list[tuple[str, str]], sample_rate: int, out_png) -> Path:
    """One spectrogram per (title, audio file), side by side, at ``sample_rate``."""
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
