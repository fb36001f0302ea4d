"""score-audio: a folder of clips judged by a word classifier (IS, modified IS, AM, FID).

    mambaseq score-audio --classifier runs/words/model --data speech_commands/ --subset test \
        --speaker-regex '(?P<speaker>[0-9a-f]{8})_nohash_\\d+\\.wav' --group-size 64
    mambaseq score-audio --classifier runs/words/model --data gen/

Clips are read as train-word-classifier reads them. With ``--subset test`` the files are the
test side of the classifier's run (``<run>/split.json``, said on stderr), else the one the
split options describe. Prints one JSON object (``pipelines.words.score_audio``).
"""
import json
import sys

from mambaseq.pipelines.words import ScoreAudioConfig, score_audio

HELP = "score a folder of clips with a word classifier: IS, modified IS, AM score, FID (JSON)"
CONFIG = ScoreAudioConfig


def run(config: ScoreAudioConfig) -> None:
    result = score_audio(config)
    if result.split_file is not None:
        print(f"[mambaseq] score-audio: the test side is the run's own, {result.split_file} "
              f"({len(result.files)} file(s))", file=sys.stderr)
    print(json.dumps(result.scores))
