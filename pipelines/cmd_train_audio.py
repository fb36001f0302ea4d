"""train-audio: train an autoregressive SaShiMi-Mamba model on a folder of recordings.

    mambaseq train-audio --data fsdd/ --out runs/audio --preset small --seq-len 2048 \
        --split-by speaker --test-speakers theo

The folder is read recursively, split by speaker (or by file) so that held-out speakers
are never heard in training, resampled, normalised and mu-law quantised; the shared loop
trains on random crops and validates on fixed crops of the held-out side, or, with
``--val-fraction``, of validation speakers split off the training side (so that nothing
chosen on validation has seen the test speakers). ``<out>/split.json`` lists the train,
validation and test files, and ``--resume`` keeps that split whatever was added to the
folder since; the model lands in ``<out>/model``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch.nn.functional as F

from mambaseq.core.atomic import atomic_file
from mambaseq.mamba_audio.datasets import (FSDD_SPEAKER_REGEX, SPLIT_BY, AudioClips, find_audio_files,
                                  speakers_from_csv, speakers_from_regex, split_files)
from mambaseq.mamba_audio.io import NORMALIZE, check_sample_rate, common_sample_rate
from mambaseq.mamba_audio.model import PRESETS, AudioLM
from mambaseq.mamba_audio.quantize import KINDS

from .distributed import is_main_process
from .options import (TrainConfig, add_training_args, fraction, positive_int, quantizer_bits,
                      regex, seed_int, share_below_one)
from .trainer import seed_everything, train

HELP = "train a SaShiMi-Mamba autoregressive model on a folder of audio files"


def add_data_args(parser) -> None:
    """Where the audio comes from and how it is split (shared with eval-audio)."""
    g = parser.add_argument_group("audio data")
    g.add_argument("--data", metavar="DIR", required=True,
                   help="folder of .wav/.flac/.ogg files (searched recursively)")
    g.add_argument("--split-by", choices=SPLIT_BY, default="speaker",
                   help="hold out whole speakers, or a random share of the files")
    g.add_argument("--speaker-regex", type=regex, default=FSDD_SPEAKER_REGEX,
                   help="regex on each file's path below --data; group 'speaker' (or 1) is "
                        "the speaker (default: FSDD's {digit}_{speaker}_{take}.wav)")
    g.add_argument("--speakers-csv", metavar="CSV", default=None,
                   help="CSV with columns file,speaker (instead of --speaker-regex)")
    g.add_argument("--test-speakers", default=None, metavar="A,B",
                   help="comma-separated held-out speakers (default: a seeded random "
                        "--test-fraction of them)")
    g.add_argument("--test-fraction", type=fraction, default=0.25,
                   help="share of speakers (or files) held out when not named")
    g.add_argument("--split-seed", type=seed_int, default=0, help="seed of the random split")
    g.add_argument("--normalize", choices=NORMALIZE, default="peak",
                   help="scale each clip to peak 1 before quantising, or keep its level")


def speakers_of(args, files) -> dict[Path, str] | None:
    """Speaker of each file by ``--speakers-csv`` or ``--speaker-regex``; None when the
    split is by file."""
    if args.split_by != "speaker":
        return None
    return (speakers_from_csv(args.speakers_csv, files, root=args.data) if args.speakers_csv
            else speakers_from_regex(files, args.speaker_regex, root=args.data))


def split_from_args(args) -> tuple[list[Path], list[Path]]:
    """(train files, test files) of ``--data`` as the split options say."""
    files = find_audio_files(args.data)
    speakers = speakers_of(args, files)
    test_speakers = args.test_speakers.split(",") if args.test_speakers else None
    return split_files(files, by=args.split_by, test_fraction=args.test_fraction,
                       speakers=speakers, test_speakers=test_speakers, seed=args.split_seed)


def add_validation_arg(parser) -> None:
    """``--val-fraction``: validation speakers split off the training side."""
    parser.add_argument("--val-fraction", type=share_below_one, default=0.0,
                        help="validate on this share of the training speakers (or files), "
                             "split off like the test side and never trained on, so that "
                             "choices made on validation never see the test side; 0 "
                             "validates on the test side")


def validation_split(args, train_files, test_files) -> tuple[list[Path], list[Path]]:
    """(train files, validation files): ``--val-fraction`` of the training speakers (or
    files) set apart, or the test files when it is 0."""
    if not args.val_fraction:
        return train_files, test_files
    return split_files(train_files, by=args.split_by, test_fraction=args.val_fraction,
                       speakers=speakers_of(args, train_files), seed=args.split_seed + 1)


SPLIT_FILE = "split.json"                    # <out>/split.json: {"train": [file, ...], ...}
SPLIT_SIDES = ("train", "validation", "test")


def run_split(args) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, test) files of the run in ``--out`` (shared with
    train-word-classifier).

    A new run derives them from ``--data`` and the split options and writes them to
    ``<out>/split.json``; ``--resume`` takes the split the run started with from there, so
    that no file changes side when files were added to ``--data`` since (they are left out,
    with a note).

    Raises:
        ValueError: on --resume, a split.json that cannot be read or a file of it that is gone.
    """
    path = Path(args.out) / SPLIT_FILE
    if args.resume and path.is_file():
        return saved_split(path, args.data)
    train_files, test_files = split_from_args(args)
    train_files, val_files = validation_split(args, train_files, test_files)
    sides = (train_files, val_files, test_files)
    if is_main_process():
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps({side: [str(f) for f in files]
                                       for side, files in zip(SPLIT_SIDES, sides)},
                                      indent=1) + "\n")
    return sides


def saved_split(path: Path, data) -> tuple[list[Path], list[Path], list[Path]]:
    """The (train, validation, test) files of a run's ``split.json``; notes the audio files
    of ``data`` that are in none of them.

    Raises:
        ValueError: ``path`` is not a split.json, or one of its files is gone.
    """
    try:
        saved = json.loads(path.read_text())
        sides = tuple([Path(f) for f in saved[side]] for side in SPLIT_SIDES)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--resume: {path} is not a split this toolkit wrote ({e!r}); restore "
                         "it or start a new run in another --out") from None
    listed = {f for side in sides for f in side}
    gone = sorted(f for f in listed if not f.is_file())
    if gone:
        raise ValueError(f"--resume: {gone[0]} ({len(gone)} file(s) in all) of the run's split "
                         f"{path} is gone; restore it or start a new run in another --out")
    added = sorted(set(find_audio_files(data)) - listed)
    if added and is_main_process():
        print(f"[mambaseq] --resume keeps the run's split {path}: {len(added)} file(s) added to "
              f"{data} since the run started (e.g. {added[0]}) are not used", file=sys.stderr)
    return sides


def add_arguments(parser) -> None:
    add_training_args(parser)
    add_data_args(parser)
    add_validation_arg(parser)
    g = parser.add_argument_group("audio model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="model size: paper (~6.2M parameters, the Mamba paper's SC09 model), "
                        "small (~0.5M, CPU), tiny (tests); --d-model/--n-layer override it")
    g.add_argument("--sample-rate", type=positive_int, default=None,
                   help="model rate in Hz (1000 to 384000); files are resampled to it "
                        "(default: the files' own rate, which must then be one for all)")
    g.add_argument("--quantizer", choices=KINDS, default="mu_law", help="amplitude quantiser")
    g.add_argument("--bits", type=quantizer_bits, default=8,
                   help="quantiser bits (2**bits classes)")
    g.add_argument("--val-batches", type=positive_int, default=8,
                   help="fixed validation crop batches scored at each validation")
    # The shared --d-model/--n-layer default to the preset's (--n-layer = blocks per stage).
    parser.set_defaults(d_model=None, n_layer=None, seq_len=2048, batch_size=8, lr=2e-3,
                        weight_decay=0.0, warmup_steps=50)


def lm_loss(model, batch):
    """Mean next-sample cross-entropy (nats) over the real samples of a crop batch."""
    tokens, mask = batch["tokens"], batch["mask"]                        # (B, L + 1)
    logits = model(tokens[:, :-1])                                        # (B, L, C)
    keep = mask[:, 1:]
    loss = F.cross_entropy(logits[keep], tokens[:, 1:][keep])
    return loss, int(keep.sum())


def run(args):
    train_files, val_files, test_files = run_split(args)
    rate = (check_sample_rate(args.sample_rate, "--sample-rate") if args.sample_rate
            else common_sample_rate(sorted({*train_files, *val_files, *test_files})))
    preset = PRESETS[args.preset]
    args.d_model = args.d_model or preset["d_model"]
    args.n_layer = args.n_layer or preset["n_layers_per_stage"]
    cfg = TrainConfig.from_args(args)
    seed_everything(cfg.seed)
    model = AudioLM.from_preset(args.preset, d_model=args.d_model,
                                n_layers_per_stage=args.n_layer, quantizer=args.quantizer,
                                bits=args.bits, sample_rate=rate)
    if cfg.seq_len % model.total_pool:
        raise ValueError(f"--seq-len {cfg.seq_len} must be a multiple of {model.total_pool} "
                         "(the product of the pooling factors)")
    train_clips = AudioClips.from_files(train_files, rate, model.quantizer, args.normalize)
    val_clips = AudioClips.from_files(val_files, rate, model.quantizer, args.normalize)
    main = is_main_process()
    if main:
        print(f"train-audio: {len(train_files)} train files "
              f"({train_clips.n_samples / rate:.0f} s), {len(val_files)} validation files "
              f"({val_clips.n_samples / rate:.0f} s), {len(test_files)} test files at {rate} Hz")

    def get_batch(index, seq_len, batch_size, rank, world_size):
        return train_clips.crops(index, seq_len, batch_size, rank, world_size, seed=cfg.seed)

    val_batches = [val_clips.crops(i, cfg.seq_len, cfg.batch_size, seed=cfg.seed + 1)
                   for i in range(args.val_batches)]

    def eval_fn(model):
        nats = count = 0.0
        device = next(model.parameters()).device
        for batch in val_batches:
            loss, n = lm_loss(model, {k: v.to(device) for k, v in batch.items()})
            nats, count = nats + float(loss) * n, count + n
        return {"val_loss": nats / count, "val_bits_per_sample": nats / count / math.log(2)}

    summary = train(model, lm_loss, get_batch, cfg, eval_fn=eval_fn)
    if main:
        print(json.dumps({k: summary[k] for k in ("step", "loss", "best_val_loss", "model_dir")}))
