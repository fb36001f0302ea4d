"""train-word-classifier: the spoken-word classifier that judges generated clips.

    mambaseq train-word-classifier --data speech_commands/ --out runs/words \
        --speaker-regex '(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav' --val-fraction 0.15

The word of a file is the name of its folder (``yes/abc_nohash_0.wav`` says "yes");
``--skip-labels`` leaves folders out (``_unknown_`` by default). The split options are
train-audio's, so that the same speakers are held out from both models; the files of each
side go to ``<out>/split.json``, which ``--resume`` keeps (as train-audio does). Each clip is
resampled, peak-normalised and, with ``--mu-law-bits``, passed through the same mu-law
quantiser as the audio model's clips (so that real and generated clips are judged at the
same bit depth), then cut or zero-padded to ``--clip-seconds``.

After training, the class marginal and feature statistics of the training clips are stored
in the model (the references of the AM score and FID, see ``mamba_audio.gen_scores``); then
the command prints one JSON object: accuracy on the validation and test speakers (chance
= 1 / words) and the scores of the real test-speaker clips (``real_test``, see
``--group-size``), the yardstick for ``generate-audio --score``. The same object goes to
``<out>/scores.json``; ``score-audio`` scores any folder of clips later.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mambaseq.mamba_audio.classifier import WordClassifier
from mambaseq.mamba_audio.datasets import load_word_clips, words_from_folders
from mambaseq.mamba_audio.gen_scores import score_clips
from mambaseq.mamba_audio.io import check_sample_rate

from .cmd_train_audio import add_data_args, add_validation_arg, run_split
from .distributed import is_main_process
from .options import (Number, TrainConfig, add_training_args, non_negative_float, non_negative_int,
                      positive_float, positive_int)
from .trainer import seed_everything, train

HELP = "train the spoken-word classifier that scores generated clips (IS, mIS, AM, FID)"
# --mu-law-bits: 0 keeps the clips as read, else the quantiser's own range (1 to 16)
MU_LAW_BITS = Number("mu_law_bits", int, 0, 16)


def add_arguments(parser) -> None:
    add_training_args(parser)
    add_data_args(parser)
    add_validation_arg(parser)
    g = add_clip_args(parser)
    g.add_argument("--sample-rate", type=positive_int, default=16000,
                   help="rate clips are resampled to")
    g.add_argument("--clip-seconds", type=positive_float, default=1.0,
                   help="clips are cut or zero-padded to this length")
    g.add_argument("--shift-ms", type=non_negative_float, default=100.0,
                   help="training clips are shifted in time by up to this much (augmentation)")
    # 600 steps of 32 clips (about 9 passes over the 2,079 training clips of Speech
    # Commands' ten words) reach 81% on held-out speakers in about 4 CPU minutes (README).
    parser.set_defaults(steps=600, batch_size=32, lr=3e-3, weight_decay=0.01,
                        warmup_steps=50, eval_every=200, save_every=500, val_fraction=0.15)


def add_clip_args(parser):
    """Which clips are read and how (shared with score-audio); returns the option group."""
    g = parser.add_argument_group("word clips")
    g.add_argument("--skip-labels", default="_unknown_", metavar="A,B",
                   help="comma-separated folder names whose files are left out")
    g.add_argument("--mu-law-bits", type=MU_LAW_BITS, default=8,
                   help="pass clips through a mu-law quantiser of this many bits, as the "
                        "audio model sees them (0 = keep them as read)")
    g.add_argument("--group-size", type=non_negative_int, default=0,
                   help="also score the test clips in random groups of this many (as many "
                        "as generate-audio makes), mean and sd over the groups; 0 = off")
    return g


def skipped(args) -> set[str]:
    return set(filter(None, args.skip_labels.split(",")))


def run(args):
    check_sample_rate(args.sample_rate, "--sample-rate")
    skip = skipped(args)
    train_files, val_files, test_files = run_split(args)
    train_pairs, val_pairs, test_pairs = (words_from_folders(f, skip)
                                          for f in (train_files, val_files, test_files))
    labels = sorted({w for _, w in train_pairs})
    if len(labels) < 2:
        raise ValueError(f"{args.data}: the training side holds {len(labels)} word folders "
                         "after --skip-labels; a classifier needs 2 or more")
    cfg = TrainConfig.from_args(args)
    seed_everything(cfg.seed)
    model = WordClassifier(labels=labels, sample_rate=args.sample_rate,
                           clip_seconds=args.clip_seconds)
    train_wavs, train_ids, val_wavs, val_ids, test_wavs, test_ids = (
        t for pairs in (train_pairs, val_pairs, test_pairs)
        for t in load_word_clips(pairs, labels, args.sample_rate, model.clip_samples,
                                 args.mu_law_bits))
    print(f"train-word-classifier: {len(labels)} words, {len(train_ids)} train / "
          f"{len(val_ids)} validation / {len(test_ids)} test clips")
    max_shift = int(args.shift_ms / 1000 * args.sample_rate)

    def get_batch(index, seq_len, batch_size, rank, world_size):
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + index) * world_size + rank)
        picks = torch.randint(0, len(train_ids), (batch_size,), generator=gen)
        shifts = torch.randint(-max_shift, max_shift + 1, (batch_size,), generator=gen)
        wavs = torch.stack([_shifted(train_wavs[i], int(s)) for i, s in zip(picks, shifts)])
        return {"wav": wavs, "label": train_ids[picks]}

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch["wav"]), batch["label"]), len(batch["label"])

    def eval_fn(model):
        device = next(model.parameters()).device
        logits = torch.cat([model(val_wavs[i:i + 256].to(device)).cpu()
                            for i in range(0, len(val_ids), 256)])
        return {"val_loss": float(F.cross_entropy(logits, val_ids)),
                "val_accuracy": float((logits.argmax(-1) == val_ids).double().mean())}

    summary = train(model, loss_fn, get_batch, cfg, eval_fn=eval_fn)
    if not is_main_process():           # torchrun: rank 0 alone fits, saves and reports
        return
    model = model.cpu().eval()
    model.fit_reference(train_wavs)
    model.save_pretrained(summary["model_dir"])
    real_test = score_clips(model, test_wavs, ids=test_ids, group_size=args.group_size)
    result = {"words": labels, "chance": round(1 / len(labels), 4),
              "val_accuracy": round(score_clips(model, val_wavs, ids=val_ids)["accuracy"], 4),
              "test_accuracy": round(real_test["accuracy"], 4), "test_clips": len(test_ids),
              "model_dir": summary["model_dir"], "real_test": real_test}
    (Path(cfg.out) / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def _shifted(wav: torch.Tensor, shift: int) -> torch.Tensor:
    """(L,) -> (L,) moved ``shift`` samples later (earlier when negative), zero-filled."""
    if shift == 0:
        return wav
    out = torch.zeros_like(wav)
    if shift > 0:
        out[shift:] = wav[:-shift]
    else:
        out[:shift] = wav[-shift:]
    return out
