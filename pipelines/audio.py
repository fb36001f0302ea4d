"""Audio language models as jobs: train one on a folder of recordings, score held-out
recordings with it, generate clips from it.

    from mambaseq.pipelines.audio import TrainAudioConfig, train_audio, generate_audio, \\
        GenerateAudioConfig
    run = train_audio(TrainAudioConfig(data="fsdd/", out="runs/audio", test_speakers="theo"))
    gen = generate_audio(GenerateAudioConfig(model=str(run.model_dir), out="gen", n=4))
    gen.files, gen.samples_per_second

The folder is read recursively and split by speaker (or by file), so that held-out speakers
are never heard in training; the files of each side go to ``<out>/split.json``, which a
resumed run keeps whatever was added to the folder since, and which scoring the run's model
on its test side reads (:func:`held_out_files`). Clips are resampled, normalised and mu-law
quantised (``mamba_audio``); the shared loop trains on random crops and validates on fixed
crops of the validation side (``val_fraction`` of the training speakers), or of the test
side when ``val_fraction`` is 0.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from mambaseq.mamba_audio.classifier import WordClassifier
from mambaseq.mamba_audio.datasets import (FSDD_SPEAKER_REGEX, SPLIT_BY, AudioClips,
                                           find_audio_files)
from mambaseq.mamba_audio.gen_scores import score_clips
from mambaseq.mamba_audio.io import (MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, NORMALIZE,
                                     common_sample_rate, load_audio)
from mambaseq.mamba_audio.metrics import markov_bits_per_sample, median_stats
from mambaseq.mamba_audio.model import PRESETS, AudioLM
from mambaseq.mamba_audio.plots import plot_spectrograms
from mambaseq.mamba_audio.quantize import KINDS
from mambaseq.mamba_audio.sampler import generate, save_clips, stale_clips
from mambaseq.mamba_audio.training import (SPLIT_FILE, FolderSplit, HeldOut, clips_nll_bits,
                                           held_out_side, lm_eval, lm_loss, split_of_run)

from .training import (Config, ConfigError, TrainConfig, fraction, is_main_process,
                       non_negative_float, non_negative_int, option, positive_float,
                       positive_int, probability_mass, quantizer_bits, redefault, regex,
                       resolve_device, run_folder, seed_everything, seed_int, share_below_one,
                       train)

DEVICES = ("auto", "cpu", "cuda")


def check_sample_rate_field(config: Config, field: str = "sample_rate") -> None:
    """Refuse a config whose ``field`` (Hz, or None) is not a plausible sample rate.

    Raises:
        ConfigError: naming the field.
    """
    rate = getattr(config, field)
    if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ConfigError(type(config).__name__, field, f"must be a rate from "
                          f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, got {rate}")


@dataclasses.dataclass(kw_only=True)
class AudioDataOptions(Config):
    """Where the recordings come from and how they are split: shared by every job that
    reads a folder of recordings (train-audio, eval-audio, train-word-classifier,
    score-audio), so that the same speakers are held out from all of them."""

    OPTIONS_GROUP = "audio data"
    data: str = option(metavar="DIR", help="folder of .wav/.flac/.ogg files (searched "
                                           "recursively)")
    split_by: str = option("speaker", choices=SPLIT_BY,
                           help="hold out whole speakers, or a random share of the files")
    speaker_regex: str = option(FSDD_SPEAKER_REGEX, rule=regex,
                                help="regex on each file's path below data; group 'speaker' "
                                     "(or 1) is the speaker; the default reads FSDD's "
                                     "{digit}_{speaker}_{take}.wav")
    speakers_csv: str | None = option(None, metavar="CSV",
                                      help="CSV with columns file,speaker (instead of "
                                           "speaker_regex)")
    test_speakers: str | None = option(None, metavar="A,B",
                                       help="comma-separated held-out speakers; when not "
                                            "given, a seeded random test_fraction of them")
    test_fraction: float = option(0.25, rule=fraction,
                                  help="share of speakers (or files) held out when not named")
    split_seed: int = option(0, rule=seed_int, help="seed of the random split")
    normalize: str = option("peak", choices=NORMALIZE,
                            help="scale each clip to peak 1 before quantising, or keep its "
                                 "level")

    def folder_split(self, val_fraction: float = 0.0) -> FolderSplit:
        """The split these options describe, ``val_fraction`` of the training side set
        apart for validation."""
        return FolderSplit(data=self.data, by=self.split_by, speaker_regex=self.speaker_regex,
                           speakers_csv=self.speakers_csv,
                           test_speakers=tuple(self.test_speakers.split(","))
                           if self.test_speakers else None,
                           test_fraction=self.test_fraction, seed=self.split_seed,
                           val_fraction=val_fraction)


def run_split(config) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, test) files of the training run ``config`` describes (an
    :class:`AudioDataOptions` and ``TrainConfig`` with a ``val_fraction``): derived from the
    split options and written to ``<out>/split.json``, or, on resume, the run's own from
    there (``mamba_audio.training.split_of_run``).

    Raises:
        ValueError: on resume, a split.json that cannot be read or a file of it that is gone.
    """
    return split_of_run(config.folder_split(config.val_fraction), config.out, config.resume,
                        write=is_main_process())


def held_out_files(config: AudioDataOptions, model_dir, need_train: bool = False) -> HeldOut:
    """``(train, test, split_file)``: the held-out side of the model in ``model_dir`` and
    the training side it was fit on. From the run's own ``split.json`` when the model's run
    folder holds one (``OUT/split.json`` beside ``OUT/model``), so that speakers added to
    ``data`` since training are never scored as held out; else from the split options.

    Args:
        need_train: the training side will be read too (its files must all exist).
    Raises:
        ValueError: the run's split.json cannot be read or a file of it is gone (named).
    """
    return held_out_side(config.folder_split(), model_dir, need_train)


# -- train-audio ------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class TrainAudioConfig(AudioDataOptions, TrainConfig):
    """Options of :func:`train_audio` (and of ``mambaseq train-audio``)."""

    OPTIONS_GROUP = "audio model"
    seq_len: int = redefault(TrainConfig, "seq_len", 2048,
                             help="samples per training crop (a multiple of the model's "
                                  "pooling, 16)")
    batch_size: int = redefault(TrainConfig, "batch_size", 8,
                                help="crops per micro-batch on each process")
    lr: float = redefault(TrainConfig, "lr", 2e-3)
    weight_decay: float = redefault(TrainConfig, "weight_decay", 0.0)
    warmup_steps: int = redefault(TrainConfig, "warmup_steps", 50)
    val_fraction: float = option(0.0, rule=share_below_one,
                                 help="validate on this share of the training speakers (or "
                                      "files), split off like the test side and never trained "
                                      "on, so that choices made on validation never see the "
                                      "test side; 0 validates on the test side")
    preset: str = option("small", choices=tuple(sorted(PRESETS)),
                         help="model size: paper (~6.2M parameters, the Mamba paper's SC09 "
                              "model), small (~0.5M, CPU), tiny (tests); d_model/n_layer "
                              "override it")
    d_model: int | None = option(None, rule=positive_int,
                                 help="model width D; when not given, the preset's")
    n_layer: int | None = option(None, rule=positive_int,
                                 help="Mamba blocks per U-Net stage; when not given, the "
                                      "preset's")
    sample_rate: int | None = option(None, rule=positive_int,
                                     help=f"model rate in Hz ({MIN_SAMPLE_RATE} to "
                                          f"{MAX_SAMPLE_RATE}); files are resampled to it; "
                                          "when not given, the files' own rate, which must "
                                          "then be one for all")
    quantizer: str = option("mu_law", choices=KINDS, help="amplitude quantiser")
    bits: int = option(8, rule=quantizer_bits, help="quantiser bits (2**bits classes)")
    val_batches: int = option(8, rule=positive_int,
                              help="fixed validation crop batches scored at each validation")

    def __post_init__(self):
        super().__post_init__()
        check_sample_rate_field(self)


@dataclasses.dataclass
class TrainAudioResult:
    """What :func:`train_audio` made.

    Attributes:
        model_dir: the model (``AudioLM.from_pretrained``); ``out``: the run folder.
        split_file: ``<out>/split.json``, the train, validation and test files.
        sample_rate: the model's rate (Hz).
        step: optimizer steps done; ``loss``: the last averaged training loss (nats per
            sample); ``best_val_loss``: the lowest validation loss; ``val``: the last
            validation metrics (``val_loss``, ``val_bits_per_sample``).
    """

    model_dir: Path
    out: Path
    split_file: Path
    sample_rate: int
    step: int
    loss: float | None
    best_val_loss: float | None
    val: dict

    def summary(self) -> dict:
        """What the command line prints: step, loss, best_val_loss, model_dir."""
        return {"step": self.step, "loss": self.loss, "best_val_loss": self.best_val_loss,
                "model_dir": str(self.model_dir)}


def train_audio(config: TrainAudioConfig) -> TrainAudioResult:
    """Train an autoregressive SaShiMi-Mamba model on a folder of recordings.

    >>> from mambaseq.mamba_audio.synth import write_demo_corpus
    >>> _ = write_demo_corpus("fsdd", n_speakers=3, clips_per_speaker=2, seconds=0.25)  # 8 kHz
    >>> run = train_audio(TrainAudioConfig(data="fsdd/", out="runs/audio", test_speakers="spk2",
    ...                                    preset="tiny", steps=2, seq_len=64, batch_size=2,
    ...                                    device="cpu"))
    >>> run.step, run.sample_rate, run.split_file.name
    (2, 8000, 'split.json')
    >>> AudioLM.from_pretrained(run.model_dir).config.d_model                  # preset "tiny"
    16

    Raises:
        ValueError: bad input (files of different rates without ``sample_rate``, a split
            with an empty side, ``seq_len`` not a multiple of the pooling), naming it;
            ``OutRefused``: ``config.out`` is not a folder this job may write.
    """
    find_audio_files(config.data)      # a missing or empty folder is refused before out is made
    with run_folder(config, "train-audio", training=True) as out:
        return _train_audio(config, out)


def _train_audio(config: TrainAudioConfig, out: Path) -> TrainAudioResult:
    train_files, val_files, test_files = run_split(config)
    rate = config.sample_rate or common_sample_rate(sorted({*train_files, *val_files,
                                                             *test_files}))
    preset = PRESETS[config.preset]
    seed_everything(config.seed)
    model = AudioLM.from_preset(config.preset, d_model=config.d_model or preset["d_model"],
                                n_layers_per_stage=config.n_layer
                                or preset["n_layers_per_stage"],
                                quantizer=config.quantizer, bits=config.bits, sample_rate=rate)
    if config.seq_len % model.total_pool:
        raise ValueError(f"seq_len {config.seq_len} must be a multiple of {model.total_pool} "
                         "(the product of the pooling factors)")
    train_clips = AudioClips.from_files(train_files, rate, model.quantizer, config.normalize)
    val_clips = AudioClips.from_files(val_files, rate, model.quantizer, config.normalize)
    if is_main_process():
        print(f"train-audio: {len(train_files)} train files "
              f"({train_clips.n_samples / rate:.0f} s), {len(val_files)} validation files "
              f"({val_clips.n_samples / rate:.0f} s), {len(test_files)} test files at {rate} Hz",
              file=sys.stderr)

    def get_batch(index, seq_len, batch_size, rank, world_size):
        return train_clips.crops(index, seq_len, batch_size, rank, world_size, seed=config.seed)

    eval_fn = lm_eval(val_clips, config.val_batches, config.seq_len, config.batch_size,
                      seed=config.seed + 1)
    summary = train(model, lm_loss, get_batch, config, eval_fn=eval_fn)
    return TrainAudioResult(model_dir=Path(summary["model_dir"]), out=out,
                            split_file=out / SPLIT_FILE, sample_rate=rate,
                            step=summary["step"], loss=summary["loss"],
                            best_val_loss=summary["best_val_loss"], val=summary["val"])


# -- eval-audio -------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class EvalAudioConfig(AudioDataOptions):
    """Options of :func:`evaluate_audio` (and of ``mambaseq eval-audio``)."""

    OPTIONS_GROUP = "eval-audio"
    model: str = option(metavar="DIR", help="a model folder written by train-audio "
                                            "(<out>/model)")
    subset: str = option("all", choices=("all", "test"),
                         help="score every file under data, or only the held-out side: the "
                              "test files of the model's run (its split.json), else those the "
                              "split options describe (as in train-audio)")
    markov_baseline: bool = option(False, help="with subset test: also score order 0, 1 and "
                                               "2 Markov chains over the classes, fit on the "
                                               "training side of the split")
    chunk_size: int = option(2 ** 14, rule=positive_int,
                             help="samples per chunk of the streamed forward")
    batch_samples: int = option(2 ** 16, rule=positive_int,
                                help="clips are scored together up to about this many "
                                     "samples")
    max_files: int = option(0, rule=non_negative_int,
                            help="score only this many files, evenly spread (0 = all)")
    device: str = option("auto", choices=DEVICES, help="auto = cuda when available, else cpu")
    threads: int = option(0, rule=non_negative_int,
                          help="CPU threads for torch (0 = torch's default)")

    def __post_init__(self):
        super().__post_init__()
        if self.markov_baseline and self.subset != "test":
            raise ConfigError(type(self).__name__, "markov_baseline",
                              "needs subset test (it is fit on the training side)")


@dataclasses.dataclass
class EvalAudioResult:
    """What :func:`evaluate_audio` measured.

    Attributes:
        bits_per_sample: negative log2-likelihood per scored sample.
        samples: samples scored (each file's from its second on).
        files: the files scored, in order.
        seconds: wall time of the scoring.
        markov_bits_per_sample: {"order_0", "order_1", "order_2"} of the Markov baselines
            fit on the training side (None unless asked).
        split_file: the run's split.json the test side came from (None: not from one).
    """

    bits_per_sample: float
    samples: int
    files: list[Path]
    seconds: float
    markov_bits_per_sample: dict[str, float] | None = None
    split_file: Path | None = None

    def summary(self) -> dict:
        """What the command line prints: bits_per_sample, samples, files (a count),
        seconds, and markov_bits_per_sample when measured."""
        return {"bits_per_sample": self.bits_per_sample, "samples": self.samples,
                "files": len(self.files), "seconds": self.seconds,
                **({"markov_bits_per_sample": self.markov_bits_per_sample}
                   if self.markov_bits_per_sample is not None else {})}


def evaluate_audio(config: EvalAudioConfig) -> EvalAudioResult:
    """Negative log-likelihood of recordings under a trained model, in bits per sample.

    Each file is resampled to the model's rate, quantised, and scored from its second
    sample on, streamed in chunks (memory bounded by ``chunk_size`` x batch whatever a
    recording's length). With ``subset="test"`` only the held-out files are scored
    (:func:`held_out_files`).

    >>> from mambaseq.mamba_audio.synth import write_demo_corpus
    >>> _ = write_demo_corpus("fsdd", n_speakers=3, clips_per_speaker=2, seconds=0.25)  # 8 kHz
    >>> AudioLM.from_preset("tiny", sample_rate=8000).save_pretrained("model")  # untrained
    >>> r = evaluate_audio(EvalAudioConfig(model="model", data="fsdd/", subset="test",
    ...                                    test_speakers="spk2"))
    >>> [f.name for f in r.files], r.samples, 7 < r.bits_per_sample < 9   # about log2(256)
    (['0_spk2_0.wav', '1_spk2_1.wav'], 3998, True)

    Raises:
        ValueError: the run's split.json lists a file that is gone, a bad audio file, ...
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model = AudioLM.from_pretrained(config.model, device=device).eval()
    held = (held_out_files(config, config.model, need_train=config.markov_baseline)
            if config.subset == "test" else None)
    files = held.test if held is not None else find_audio_files(config.data)
    if config.max_files and config.max_files < len(files):
        files = [files[i * len(files) // config.max_files] for i in range(config.max_files)]
    clips = AudioClips.from_files(files, model.sample_rate, model.quantizer, config.normalize)
    start = time.perf_counter()
    bits, count = clips_nll_bits(model, clips, chunk_size=config.chunk_size,
                                 batch_samples=config.batch_samples, device=device)
    result = EvalAudioResult(bits_per_sample=bits / count, samples=count, files=list(files),
                             seconds=round(time.perf_counter() - start, 2),
                             split_file=held.split_file if held is not None else None)
    if config.markov_baseline:
        train_clips = AudioClips.from_files(held.train, model.sample_rate, model.quantizer,
                                            config.normalize).clips
        result.markov_bits_per_sample = {
            f"order_{k}": markov_bits_per_sample(train_clips, clips.clips, order=k,
                                                 n_classes=model.quantizer.n_classes)
            for k in (0, 1, 2)}
    return result


# -- generate-audio ---------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class GenerateAudioConfig(Config):
    """Options of :func:`generate_audio` (and of ``mambaseq generate-audio``)."""

    OPTIONS_GROUP = "generate-audio"
    model: str = option(metavar="DIR", help="a model folder written by train-audio "
                                            "(<out>/model)")
    out: str = option(metavar="DIR", help="folder for the wavs, spectrograms.png and "
                                          "config.json")
    n: int = option(16, rule=positive_int, flags=("--n", "--n-clips"),
                    help="clips generated together (one batch)")
    seconds: float = option(1.0, rule=positive_float, help="length of each clip")
    prime: str | None = option(None, metavar="FILE",
                               help="audio file whose start primes every clip (kept in the "
                                    "output)")
    prime_seconds: float = option(0.25, rule=positive_float, help="how much of prime to use")
    temperature: float = option(1.0, rule=non_negative_float, help="0 = greedy")
    top_k: int | None = option(None, rule=positive_int, help="keep the k likeliest classes")
    top_p: float | None = option(None, rule=probability_mass, help="nucleus sampling mass")
    seed: int = option(0, rule=seed_int, help="same seed, same clips")
    compare: tuple[str, ...] = option((), metavar="FILE", nargs="*",
                                      help="real clips drawn beside the generated ones in "
                                           "spectrograms.png")
    score: str | None = option(None, metavar="CLASSIFIER_DIR",
                               help="a word classifier written by train-word-classifier: "
                                    "score the generated clips (Inception Score, modified IS, "
                                    "AM score, FID)")
    device: str = option("auto", choices=DEVICES, help="auto = cuda when available, else cpu")
    threads: int = option(1, rule=non_negative_int,
                          help="CPU threads for torch; a step's ops are tiny, so 1 is usually "
                               "fastest (0 = torch's default)")


@dataclasses.dataclass
class GenerateAudioResult:
    """What :func:`generate_audio` made.

    Attributes:
        files: the clips, ``<out>/sample_000.wav``... at ``sample_rate``; ``removed``: the
            older clips of a larger batch that this run deleted from ``<out>``.
        spectrograms: ``<out>/spectrograms.png`` (the first clips, and ``compare``'s).
        tokens: (n, primed_samples + samples) int64, the quantiser classes of the clips.
        samples: new samples per clip; ``primed_samples``: priming samples per clip.
        samples_per_second: generated samples of all clips per second of generation;
            ``samples_per_second_with_priming``: every sample stepped, priming included,
            per second of the whole run.
        slowdown_last_vs_first: time per step of the last 1000 steps over the first 1000
            (about 1: a step's cost does not grow with the length generated).
        generated, real: median ``clip_stats`` of the generated (priming excluded) and of
            the ``compare`` clips (None without them).
        scores: the word classifier's scores of the generated clips (None without one).
    """

    files: list[Path]
    removed: list[Path]
    spectrograms: Path
    tokens: torch.Tensor
    sample_rate: int
    samples: int
    primed_samples: int
    samples_per_second: float
    samples_per_second_with_priming: float
    slowdown_last_vs_first: float
    generated: dict
    real: dict | None = None
    scores: dict | None = None

    def summary(self) -> dict:
        """What the command line prints (speeds rounded)."""
        return {"files": [str(p) for p in self.files], "sample_rate": self.sample_rate,
                "samples": self.samples, "primed_samples": self.primed_samples,
                "batch": len(self.files),
                "samples_per_second": round(self.samples_per_second, 1),
                "samples_per_second_with_priming": round(self.samples_per_second_with_priming,
                                                         1),
                "slowdown_last_vs_first": round(self.slowdown_last_vs_first, 3),
                "generated": self.generated,
                **({"real": self.real} if self.real is not None else {}),
                **({"scores": self.scores} if self.scores is not None else {})}


def generate_audio(config: GenerateAudioConfig) -> GenerateAudioResult:
    """Sample ``n`` clips from a trained model as one batch, one recurrent step per sample.

    Writes ``<out>/sample_000.wav``... at the model's rate (and removes the
    ``sample_NNN.wav`` an earlier, larger batch left in this folder) and
    ``<out>/spectrograms.png``.

    >>> AudioLM.from_preset("tiny", sample_rate=8000).save_pretrained("model")  # untrained
    >>> gen = generate_audio(GenerateAudioConfig(model="model", out="gen", n=2, seconds=0.05,
    ...                                          top_p=0.95))
    >>> [f.name for f in gen.files], gen.tokens.shape                 # 0.05 s at 8 kHz each
    (['sample_000.wav', 'sample_001.wav'], torch.Size([2, 400]))

    Raises:
        ValueError: ``score`` is not a word classifier, a bad prime file, ...;
            ``OutRefused``: ``config.out`` is not a folder this job may write.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    # the models are read (and refused, naming the folder) before the out folder is made
    model = AudioLM.from_pretrained(config.model, device=device).eval()
    judge = WordClassifier.from_pretrained(config.score) if config.score else None
    with run_folder(config, "generate-audio", training=False) as out:
        return _generate(config, out, model, judge)


def _generate(config: GenerateAudioConfig, out: Path, model: AudioLM,
              judge: WordClassifier | None) -> GenerateAudioResult:
    rate = model.sample_rate
    prime = None
    if config.prime:
        wav, _ = load_audio(config.prime, sample_rate=rate, normalize="peak")
        prime = model.quantizer.encode(wav[:max(1, int(config.prime_seconds * rate))])
    n_samples = int(round(config.seconds * rate))
    if n_samples < 1:
        raise ValueError(f"seconds {config.seconds} is less than one sample at {rate} Hz")
    result = generate(model, n_clips=config.n, n_samples=n_samples,
                      temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                      prime=prime, seed=config.seed)
    paths = save_clips(result.tokens, model.quantizer, rate, out)
    removed = stale_clips(out, config.n)
    for path in removed:
        path.unlink()
    png = plot_spectrograms([("generated", p) for p in paths[:2]]
                            + [("real", p) for p in config.compare], rate,
                            out / "spectrograms.png")
    steps = result.step_seconds
    window = min(1000, len(steps) // 2) or 1
    generated = model.quantizer.decode(result.tokens[:, result.n_prime:])      # (B, L) float
    real = ([load_audio(p, sample_rate=rate, normalize="peak")[0] for p in config.compare]
            if config.compare else None)
    return GenerateAudioResult(
        files=paths, removed=removed, spectrograms=png, tokens=result.tokens,
        sample_rate=rate, samples=n_samples, primed_samples=result.n_prime,
        samples_per_second=result.samples_per_second,
        samples_per_second_with_priming=result.samples_per_second_with_priming,
        slowdown_last_vs_first=float(steps[-window:].mean() / steps[:window].mean()),
        generated=median_stats(list(generated)),
        real=median_stats(real) if real else None,
        scores=score_clips(judge, generated.float().cpu(), rate) if judge else None)
