"""The jobs the toolkit exists for, as functions a notebook calls: a config in, a result out.

>>> from mambaseq.pipelines import PretrainGenomeConfig, pretrain_genome
>>> PretrainGenomeConfig(fasta=["genome.fa"], out="runs/lm", steps=0)
Traceback (most recent call last):
...
mambaseq.pipelines.training.fields.ConfigError: PretrainGenomeConfig.steps must be a positive integer, got 0

Each job lives in its module (``genome``, ``species``, ``embeddings``, ``audio``, ``words``,
``conversion``, ``demos``, ``benchmarks``; never named as a function of it: a submodule
``embed`` would shadow the function ``embed`` here once imported), over one training layer (``pipelines.training``); the
command line (``pipelines.cli``, ``python -m mambaseq.pipelines``) is a thin layer that turns
flags into these configs. Names are imported on first use, so that the command line starts
without importing every job.
"""
from mambaseq import _layer_folder, _lazy_names

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

# public name -> the module of this package that defines it
_JOBS = {
    "genome": ("PretrainGenomeConfig", "PretrainResult", "pretrain_genome",
               "EvalGenomeConfig", "evaluate_genome", "SimulateGenomesConfig",
               "simulate_genome_fastas"),
    "species": ("ClassifySpeciesConfig", "SpeciesResult", "train_species_classifier",
                "PredictSpeciesConfig", "PredictResult", "predict_species"),
    "embeddings": ("EmbedConfig", "EmbedResult", "embed"),
    "audio": ("TrainAudioConfig", "TrainAudioResult", "train_audio", "EvalAudioConfig",
              "EvalAudioResult", "evaluate_audio", "GenerateAudioConfig", "GenerateAudioResult",
              "generate_audio"),
    "words": ("TrainWordClassifierConfig", "WordClassifierResult", "train_word_classifier",
              "ScoreAudioConfig", "ScoreAudioResult", "score_audio"),
    "conversion": ("ConvertConfig", "ConvertResult", "convert", "convert_model"),
    "demos": ("DemoConfig", "DemoResult", "demo"),
    "benchmarks": ("BenchConfig", "BenchResult", "run_benchmarks"),
    "training": ("TrainConfig", "train", "ConfigError"),
}
__getattr__, __all__ = _lazy_names(__spec__.name, _JOBS)


if __name__ == "__main__":
    import sys

    from mambaseq.pipelines.cli import main

    sys.exit(main())
