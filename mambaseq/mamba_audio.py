"""Audio on Mamba: mu-law quantisation, wav/flac/ogg I/O, speech folders split by speaker,
speech-like demo audio, the SaShiMi-Mamba autoregressive model, its sampler, NLL in bits
per sample, and the judge of generated clips: a spoken-word classifier and the scores read
off it (Inception Score, modified IS, AM score, FID).

Dimension names: B batch, L length (samples), C classes (2**bits, 256 by default).
"""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

from mambaseq.mamba_audio.classifier import WordClassifier, WordClassifierConfig
from mambaseq.mamba_audio.datasets import (FSDD_SPEAKER_REGEX, AudioClips, find_audio_files,
                                           load_word_clips, speakers_from_csv, speakers_from_regex,
                                           split_files, words_from_folders)
from mambaseq.mamba_audio.gen_scores import (am_score, frechet_distance, inception_score,
                                             modified_inception_score, score_clips)
from mambaseq.mamba_audio.io import AudioFileError, load_audio, save_audio
from mambaseq.mamba_audio.metrics import clip_stats, markov_bits_per_sample, nll_bits
from mambaseq.mamba_audio.model import PRESETS, AudioLM, AudioLMConfig, stream_nll_bits
from mambaseq.mamba_audio.quantize import (Quantizer, linear_decode, linear_encode, mu_law_decode,
                                           mu_law_encode)
from mambaseq.mamba_audio.sampler import GenerationResult, generate, save_clips
from mambaseq.mamba_audio.synth import Voice, speech_like, write_demo_corpus

__all__ = [
    "Quantizer", "mu_law_encode", "mu_law_decode", "linear_encode", "linear_decode",
    "load_audio", "save_audio", "AudioFileError",
    "find_audio_files", "speakers_from_regex", "speakers_from_csv", "split_files",
    "FSDD_SPEAKER_REGEX", "AudioClips",
    "speech_like", "Voice", "write_demo_corpus",
    "AudioLM", "AudioLMConfig", "PRESETS", "generate", "GenerationResult", "save_clips",
    "nll_bits", "stream_nll_bits", "markov_bits_per_sample", "clip_stats",
    "WordClassifier", "WordClassifierConfig", "words_from_folders", "load_word_clips",
    "inception_score", "modified_inception_score", "am_score", "frechet_distance", "score_clips",
]
