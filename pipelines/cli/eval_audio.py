"""eval-audio: negative log-likelihood of held-out recordings, in bits per sample.

    mambaseq eval-audio --model runs/audio/model --data fsdd/ --subset test

Prints one JSON object: ``{"bits_per_sample", "samples", "files", "seconds"}`` (with
``--markov-baseline`` also ``markov_bits_per_sample``: order 0-2 Markov chains over the
classes fit on the training side and scored on the same files). With ``--subset test`` the
files are the test side of the model's run (``<run>/split.json``, said on stderr), else the
one the split options describe (``pipelines.audio.evaluate_audio``).
"""
import json
import sys

from mambaseq.pipelines.audio import EvalAudioConfig, evaluate_audio

HELP = "score held-out audio with a trained model: NLL in bits per sample (JSON)"
CONFIG = EvalAudioConfig


def run(config: EvalAudioConfig) -> None:
    result = evaluate_audio(config)
    if result.split_file is not None:
        print(f"[mambaseq] eval-audio: the test side is the run's own, {result.split_file} "
              f"({len(result.files)} file(s) scored)", file=sys.stderr)
    print(json.dumps(result.summary()))
