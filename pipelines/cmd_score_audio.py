"""score-audio: a folder of clips judged by a word classifier (IS, modified IS, AM, FID).

    mambaseq score-audio --classifier runs/words/model --data speech_commands/ --subset test \
        --speaker-regex '(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav' --group-size 64
    mambaseq score-audio --classifier runs/words/model --data gen/

Clips are read as train-word-classifier reads them (resampled to the classifier's rate,
peak-normalised, through ``--mu-law-bits``, cut or padded to its clip length). When every
file sits in a folder named after one of the classifier's words, ``accuracy`` is reported
too. Prints one JSON object (``mamba_audio.gen_scores.score_clips``).
"""
from __future__ import annotations

import json

from mambaseq.mamba_audio.classifier import WordClassifier
from mambaseq.mamba_audio.datasets import find_audio_files, load_word_clips, words_from_folders
from mambaseq.mamba_audio.gen_scores import score_clips

from .cmd_train_audio import add_data_args, split_from_args
from .cmd_train_word_classifier import add_clip_args, skipped

HELP = "score a folder of clips with a word classifier: IS, modified IS, AM score, FID (JSON)"


def add_arguments(parser) -> None:
    parser.add_argument("--classifier", metavar="DIR", required=True,
                        help="a model written by train-word-classifier (<out>/model)")
    add_data_args(parser)
    add_clip_args(parser)
    parser.add_argument("--subset", choices=("all", "test"), default="all",
                        help="every file under --data, or only the held-out side of the split "
                             "the split options describe (as in train-audio)")


def run(args):
    classifier = WordClassifier.from_pretrained(args.classifier)
    files = split_from_args(args)[1] if args.subset == "test" else find_audio_files(args.data)
    pairs = words_from_folders(files, skipped(args))
    words = sorted({w for _, w in pairs})
    labelled = set(words) <= set(classifier.labels)
    wavs, ids = load_word_clips(pairs, classifier.labels if labelled else words,
                                classifier.config.sample_rate, classifier.clip_samples,
                                args.mu_law_bits)
    print(json.dumps(score_clips(classifier, wavs, ids=ids if labelled else None,
                                 group_size=args.group_size)))
