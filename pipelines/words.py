"""The judge of generated speech as jobs: train the spoken-word classifier, score clips with it.

    from mambaseq.pipelines.words import TrainWordClassifierConfig, train_word_classifier
    result = train_word_classifier(TrainWordClassifierConfig(
        data="speech_commands/", out="runs/words", val_fraction=0.15,
        speaker_regex=r"(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav"))
    result.test_accuracy, result.real_test["fid"]
    score_audio(ScoreAudioConfig(classifier="runs/words/model", data="gen/")).scores

The word of a file is the name of its folder (``yes/abc_nohash_0.wav`` says "yes");
``skip_labels`` leaves folders out (``_unknown_`` by default). The split options are
train-audio's, so that the same speakers are held out from both models; the files of each
side go to ``<out>/split.json``, which a resumed run keeps (as train-audio does). Each clip is
resampled, peak-normalised and, with ``mu_law_bits``, passed through the same mu-law
quantiser as the audio model's clips (so that real and generated clips are judged at the same
bit depth), then cut or zero-padded to ``clip_seconds`` (``mamba_audio.word_clips``).

After training, the class marginal and feature statistics of the training clips are stored
in the model (the references of the AM score and FID, see ``mamba_audio.gen_scores``); the
report (``<out>/scores.json``) gives the accuracy on the validation and test speakers
(chance = 1 / words) and the scores of the real test-speaker clips (``real_test``, see
``group_size``), the yardstick for ``generate-audio --score``. :func:`score_audio` scores any
folder of clips later.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from mambaseq.core.atomic import atomic_file
from mambaseq.mamba_audio.classifier import WordClassifier, WordClassifierConfig
from mambaseq.mamba_audio.datasets import find_audio_files
from mambaseq.mamba_audio.gen_scores import score_clips
from mambaseq.mamba_audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from mambaseq.mamba_audio.word_clips import (load_word_sets, score_word_files, word_batches,
                                             word_eval, word_loss, word_sides)

from .audio import (AudioDataOptions, TrainAudioConfig, check_sample_rate_field,
                    held_out_files, run_split)
from .training import (Config, ConfigError, Number, TrainConfig, is_main_process,
                       non_negative_float, non_negative_int, option, positive_float,
                       positive_int, redefault, run_folder, seed_everything, train)

SCORES_FILE = "scores.json"         # <out>/scores.json: the report of train_word_classifier
# mu_law_bits: 0 keeps the clips as read, else the quantiser's own range (1 to 16)
MU_LAW_BITS = Number("mu_law_bits", int, 0, 16)


@dataclasses.dataclass(kw_only=True)
class WordClipOptions(Config):
    """Which clips are read and how: shared by the word classifier's training and scoring."""

    OPTIONS_GROUP = "word clips"
    skip_labels: str = option("_unknown_", metavar="A,B",
                              help="comma-separated folder names whose files are left out")
    mu_law_bits: int = option(8, rule=MU_LAW_BITS,
                              help="pass clips through a mu-law quantiser of this many bits, as "
                                   "the audio model sees them (0 = keep them as read)")
    group_size: int = option(0, rule=non_negative_int,
                             help="also score the test clips in random groups of this many (as "
                                  "many as generate-audio makes), mean and sd over the groups; "
                                  "0 = off")

    def __post_init__(self):
        super().__post_init__()
        if getattr(self, "normalize", "peak") != "peak":    # AudioDataOptions' field
            raise ConfigError(type(self).__name__, "normalize",
                              f"must be peak: word clips are always peak-normalised, as the "
                              f"classifier's training clips were; got {self.normalize!r}")

    @property
    def skipped(self) -> set[str]:
        """``skip_labels`` as a set of folder names."""
        return set(filter(None, self.skip_labels.split(",")))


@dataclasses.dataclass(kw_only=True)
class TrainWordClassifierConfig(WordClipOptions, AudioDataOptions, TrainConfig):
    """Options of :func:`train_word_classifier` (and of ``mambaseq train-word-classifier``).

    The defaults: 600 steps of 32 clips (about 9 passes over the 2,079 training clips of
    Speech Commands' ten words) reach 81% on held-out speakers in about 4 CPU minutes (README).
    """

    OPTIONS_GROUP = "word classifier"
    steps: int = redefault(TrainConfig, "steps", 600)
    batch_size: int = redefault(TrainConfig, "batch_size", 32,
                                help="clips per micro-batch on each process")
    lr: float = redefault(TrainConfig, "lr", 3e-3)
    weight_decay: float = redefault(TrainConfig, "weight_decay", 0.01,
                                    help="AdamW weight decay (never applied to norms and "
                                         "biases)")
    warmup_steps: int = redefault(TrainConfig, "warmup_steps", 50)
    eval_every: int = redefault(TrainConfig, "eval_every", 200)
    save_every: int = redefault(TrainConfig, "save_every", 500)
    val_fraction: float = redefault(TrainAudioConfig, "val_fraction", 0.15)
    sample_rate: int = option(16000, rule=positive_int,
                              help=f"rate clips are resampled to ({MIN_SAMPLE_RATE} to "
                                   f"{MAX_SAMPLE_RATE} Hz)")
    clip_seconds: float = option(1.0, rule=positive_float,
                                 help="clips are cut or zero-padded to this length")
    shift_ms: float = option(100.0, rule=non_negative_float,
                             help="training clips are shifted in time by up to this much "
                                  "(augmentation)")

    def __post_init__(self):
        super().__post_init__()
        check_sample_rate_field(self)


@dataclasses.dataclass
class WordClassifierResult:
    """What :func:`train_word_classifier` made.

    Attributes:
        model_dir: the classifier (``WordClassifier.from_pretrained``), with its reference
            statistics; ``out``: the run folder.
        words: the K words, class id = index.
        val_accuracy, test_accuracy: on the validation and test speakers' clips.
        test_clips: how many test clips.
        real_test: the scores of the real test clips (``gen_scores.score_clips``).
    """

    model_dir: Path
    out: Path
    words: list[str]
    val_accuracy: float
    test_accuracy: float
    test_clips: int
    real_test: dict

    @property
    def chance(self) -> float:
        """The accuracy of a guess: 1 / words."""
        return round(1 / len(self.words), 4)

    def report(self) -> dict:
        """The JSON object of ``<out>/scores.json`` (what the command line prints)."""
        return {"words": self.words, "chance": self.chance,
                "val_accuracy": round(self.val_accuracy, 4),
                "test_accuracy": round(self.test_accuracy, 4), "test_clips": self.test_clips,
                "model_dir": str(self.model_dir), "real_test": self.real_test}


def train_word_classifier(config: TrainWordClassifierConfig) -> WordClassifierResult | None:
    """Train the log-mel CNN word classifier on the training speakers' clips, fit its
    references (AM score, FID) and score the validation and test clips.

    >>> import torch
    >>> from mambaseq.mamba_audio.io import save_audio
    >>> from mambaseq.mamba_audio.synth import speech_like
    >>> for speaker in range(3):             # Speech Commands' layout: WORD/SPEAKER_nohash_N.wav
    ...     for take in range(2):
    ...         name = f"{speaker:08x}_nohash_{take}.wav"
    ...         _ = save_audio(f"words/speech/{name}", speech_like(0.25, 16000, seed=take), 16000)
    ...         _ = save_audio(f"words/noise/{name}", torch.rand(4000) - 0.5, 16000)
    >>> r = train_word_classifier(TrainWordClassifierConfig(
    ...     data="words/", out="runs/words", test_speakers="00000002", val_fraction=0.5,
    ...     speaker_regex=r"(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav", clip_seconds=0.25,
    ...     steps=2, batch_size=4, device="cpu"))
    >>> r.words, r.test_clips, 0 <= r.test_accuracy <= 1, r.real_test["fid"] >= 0
    (['noise', 'speech'], 4, True, True)
    >>> WordClassifier.from_pretrained(r.model_dir).labels
    ['noise', 'speech']

    Returns:
        the result on the main process; None on torchrun's other ranks (rank 0 alone fits the
        references, saves and reports).
    Raises:
        ValueError: bad input (fewer than 2 words on the training side, an unreadable
            file, ...), naming it; ``out_folder.OutRefused``: ``config.out`` is not a folder
            this job may write.
    """
    find_audio_files(config.data)      # a missing or empty folder is refused before out is made
    with run_folder(config, "train-word-classifier", training=True) as out:
        return _train(config, out)


def _train(config: TrainWordClassifierConfig, out: Path) -> WordClassifierResult | None:
    labels, sides = word_sides(*run_split(config), skip=config.skipped, where=config.data)
    seed_everything(config.seed)
    model = WordClassifier(WordClassifierConfig(labels=labels, sample_rate=config.sample_rate,
                                                clip_seconds=config.clip_seconds))
    clips = load_word_sets(labels, sides, config.sample_rate, model.clip_samples,
                           config.mu_law_bits)
    if is_main_process():
        print(f"train-word-classifier: {len(labels)} words, {len(clips.train)} train / "
              f"{len(clips.validation)} validation / {len(clips.test)} test clips",
              file=sys.stderr)
    max_shift = int(config.shift_ms / 1000 * config.sample_rate)
    summary = train(model, word_loss, word_batches(clips.train, max_shift, config.seed),
                    config, eval_fn=word_eval(clips.validation))
    if not is_main_process():
        return None
    model = model.cpu().eval()
    model.fit_reference(clips.train.wavs)
    model_dir = Path(summary["model_dir"])
    model.save_pretrained(model_dir)              # atomically, over the loop's final model
    real_test = score_clips(model, clips.test.wavs, ids=clips.test.ids,
                            group_size=config.group_size)
    result = WordClassifierResult(
        model_dir=model_dir, out=out, words=labels,
        val_accuracy=score_clips(model, clips.validation.wavs,
                                 ids=clips.validation.ids)["accuracy"],
        test_accuracy=real_test["accuracy"], test_clips=len(clips.test), real_test=real_test)
    with atomic_file(out / SCORES_FILE) as tmp:
        tmp.write_text(json.dumps(result.report(), indent=1) + "\n")
    return result


@dataclasses.dataclass(kw_only=True)
class ScoreAudioConfig(WordClipOptions, AudioDataOptions):
    """Options of :func:`score_audio` (and of ``mambaseq score-audio``)."""

    OPTIONS_GROUP = "score-audio"
    classifier: str = option(metavar="DIR", help="a model written by train-word-classifier "
                                                 "(<out>/model)")
    subset: str = option("all", choices=("all", "test"),
                         help="every file under data, or only the test side of the "
                              "classifier's run (its split.json; without one, the split the "
                              "split options describe, as in train-audio)")


@dataclasses.dataclass
class ScoreAudioResult:
    """What :func:`score_audio` measured.

    Attributes:
        scores: the ``gen_scores.score_clips`` dict: ``clips``, ``inception_score``,
            ``modified_inception_score``, ``am_score``, ``fid``, ``word_shares``, and
            ``accuracy`` (clips in folders named after the classifier's words) and ``groups``
            (``group_size``) when they apply.
        files: the files read (those in ``skip_labels`` folders are left out of the scores).
        split_file: the classifier's run's split.json the test side came from (None: every
            file, or a split derived from the options).
    """

    scores: dict
    files: list[Path]
    split_file: Path | None = None


def score_audio(config: ScoreAudioConfig) -> ScoreAudioResult:
    """A folder of clips judged by a word classifier: Inception Score, modified IS, AM score
    and FID (``mamba_audio.gen_scores``).

    Clips are read as :func:`train_word_classifier` reads them (resampled to the
    classifier's rate, peak-normalised, through ``mu_law_bits``, cut or padded to its clip
    length). When every file sits in a folder named after one of the classifier's words,
    ``accuracy`` is reported too. With ``subset="test"`` only the held-out files are scored:
    the test side of the classifier's run (its ``split.json``), else the one the split
    options describe (``audio.held_out_files``).

    >>> import torch
    >>> from mambaseq.mamba_audio.classifier import WordClassifierConfig
    >>> from mambaseq.mamba_audio.io import save_audio
    >>> clf = WordClassifier(WordClassifierConfig(labels=["yes", "no"], sample_rate=8000,
    ...                                           clip_seconds=0.25))
    >>> clf.save_pretrained("clf")      # untrained; train_word_classifier makes a real one
    >>> for i in range(4):
    ...     _ = save_audio(f"gen/sample_{i:03d}.wav", torch.rand(2000) - 0.5, 8000)
    >>> r = score_audio(ScoreAudioConfig(classifier="clf", data="gen/"))
    >>> len(r.files), 1 <= r.scores["inception_score"] <= 2, r.scores["fid"] >= 0
    (4, True, True)

    Raises:
        ValueError: the run's split.json lists a file that is gone, a bad audio file, a
            ``group_size`` larger than the number of clips, ...
    """
    classifier = WordClassifier.from_pretrained(config.classifier)
    split_file = None
    if config.subset == "test":
        held_out = held_out_files(config, config.classifier)
        files, split_file = held_out.test, held_out.split_file
    else:
        files = find_audio_files(config.data)
    return ScoreAudioResult(
        scores=score_word_files(classifier, files, config.skipped, config.mu_law_bits,
                                config.group_size),
        files=files, split_file=split_file)
