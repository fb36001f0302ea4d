"""generate-audio: sample waveforms from a trained model, one recurrent step per sample.

    mambaseq generate-audio --model runs/audio/model --n 16 --seconds 1 --out gen/ \
        [--prime clip.wav --prime-seconds 0.25] [--temperature 1 --top-p 0.95] [--seed 0]

The ``--n`` clips are generated as one batch under one progress bar. Writes
``<out>/sample_000.wav``... and ``<out>/spectrograms.png``; prints one JSON object with the
files, the speed (``samples_per_second``, ``samples_per_second_with_priming``,
``slowdown_last_vs_first``), the clips' median level/clipping/silence/noisiness and, with
``--score CLASSIFIER_DIR``, their IS, modified IS, AM score and FID
(``pipelines.audio.generate_audio``).
"""
import json

from mambaseq.pipelines.audio import GenerateAudioConfig, generate_audio

HELP = "generate audio clips from a trained model (wav files + samples/s)"
CONFIG = GenerateAudioConfig


def run(config: GenerateAudioConfig) -> None:
    print(json.dumps(generate_audio(config).summary()))
