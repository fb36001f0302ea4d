"""eval-audio: negative log-likelihood of held-out recordings, in bits per sample.

    mambaseq eval-audio --model runs/audio/model --data fsdd/ --subset test --test-speakers theo

Prints one JSON object: ``{"bits_per_sample", "samples", "files", "seconds"}`` (with
``--markov-baseline`` also ``markov_bits_per_sample``: order 0-2 Markov chains over the
classes fit on the training side of the split and scored on the same files). Each file
is resampled to the model's rate, quantised, and scored from its second sample on (each
sample predicted from all before it). Clips are scored in batches of similar length and
in chunks that pass the recurrent state of every stage on, so memory is bounded by
``--chunk-size`` x batch whatever a recording's length (a 2**20-sample file included).
"""
from __future__ import annotations

import json
import time

import torch

from mambaseq.mamba_audio.datasets import AudioClips, find_audio_files
from mambaseq.mamba_audio.metrics import markov_bits_per_sample
from mambaseq.mamba_audio.model import AudioLM, stream_nll_bits

from .cmd_train_audio import add_data_args, split_from_args
from .distributed import resolve_device
from .options import non_negative_int, positive_int

HELP = "score held-out audio with a trained model: NLL in bits per sample (JSON)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", metavar="DIR", required=True,
                        help="a model directory written by train-audio (<out>/model)")
    add_data_args(parser)
    parser.add_argument("--subset", choices=("all", "test"), default="all",
                        help="score every file under --data, or only the held-out side of "
                             "the split the split options describe (as in train-audio)")
    parser.add_argument("--markov-baseline", action="store_true",
                        help="with --subset test: also score order 0, 1 and 2 Markov chains "
                             "over the classes, fit on the training side of the split")
    parser.add_argument("--chunk-size", type=positive_int, default=2 ** 14,
                        help="samples per chunk of the streamed forward")
    parser.add_argument("--batch-samples", type=positive_int, default=2 ** 16,
                        help="clips are scored together up to about this many samples")
    parser.add_argument("--max-files", type=non_negative_int, default=0,
                        help="score only this many files, evenly spread (0 = all)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads for torch (0 = torch's default)")


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = AudioLM.from_pretrained(args.model, device=device).eval()
    if args.markov_baseline and args.subset != "test":
        raise ValueError("--markov-baseline needs --subset test (it is fit on the training side)")
    split = split_from_args(args) if args.subset == "test" else None
    files = split[1] if split else find_audio_files(args.data)
    if args.max_files and args.max_files < len(files):
        files = [files[i * len(files) // args.max_files] for i in range(args.max_files)]
    clips = AudioClips.from_files(files, model.sample_rate, model.quantizer, args.normalize)
    batches, current = [], []       # clips of similar length, about --batch-samples each
    for i in sorted(range(len(clips)), key=lambda i: len(clips.clips[i])):
        if current and (len(current) + 1) * len(clips.clips[i]) > args.batch_samples:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    start, bits, count = time.perf_counter(), 0.0, 0
    for indices in batches:
        batch = clips.padded(indices)
        b, n = stream_nll_bits(model, batch["tokens"].to(device), batch["mask"].to(device),
                               chunk_size=args.chunk_size)
        bits, count = bits + b, count + n
    result = {"bits_per_sample": bits / count, "samples": count, "files": len(files),
              "seconds": round(time.perf_counter() - start, 2)}
    if args.markov_baseline:
        train = AudioClips.from_files(split[0], model.sample_rate, model.quantizer,
                                      args.normalize).clips
        result["markov_bits_per_sample"] = {
            f"order_{k}": markov_bits_per_sample(train, clips.clips, order=k,
                                                 n_classes=model.quantizer.n_classes)
            for k in (0, 1, 2)}
    print(json.dumps(result))
