"""train-word-classifier: the spoken-word classifier that judges generated clips.

    mambaseq train-word-classifier --data speech_commands/ --out runs/words \
        --speaker-regex '(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav' --val-fraction 0.15

The split options are train-audio's (the same speakers held out from both models); the
files of each side go to ``<out>/split.json``, which ``--resume`` keeps. Prints one JSON
object, also written to ``<out>/scores.json``: accuracy on the validation and test speakers
(chance = 1 / words) and the scores of the real test-speaker clips (``real_test``), the
yardstick for ``generate-audio --score`` (``pipelines.words.train_word_classifier``).
"""
import json

from mambaseq.pipelines.words import TrainWordClassifierConfig, train_word_classifier

HELP = "train the spoken-word classifier that scores generated clips (IS, mIS, AM, FID)"
CONFIG = TrainWordClassifierConfig


def run(config: TrainWordClassifierConfig) -> None:
    result = train_word_classifier(config)
    if result is not None:              # torchrun: rank 0 alone reports
        print(json.dumps(result.report()))
