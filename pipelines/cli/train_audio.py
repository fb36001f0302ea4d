"""train-audio: train an autoregressive SaShiMi-Mamba model on a folder of recordings.

    mambaseq train-audio --data fsdd/ --out runs/audio --preset small --seq-len 2048 \
        --split-by speaker --test-speakers theo

The folder is split by speaker (or by file) so that held-out speakers are never heard in
training; ``<out>/split.json`` lists the train, validation and test files and ``--resume``
keeps that split; the model lands in ``<out>/model``. Prints one JSON object: step, loss,
best_val_loss, model_dir (``pipelines.audio.train_audio``).
"""
import json

from mambaseq.pipelines.audio import TrainAudioConfig, train_audio
from mambaseq.pipelines.training import is_main_process

HELP = "train a SaShiMi-Mamba autoregressive model on a folder of audio files"
CONFIG = TrainAudioConfig


def run(config: TrainAudioConfig) -> None:
    result = train_audio(config)
    if is_main_process():
        print(json.dumps(result.summary()))
