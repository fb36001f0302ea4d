"""The training layer every job shares: the loop, its config, checkpoints and model folders,
run folders (the out rule, the lock, config.json), distributed set-up and plots.

No argparse here, and no domain: errors name config fields, and a job hands the loop a
model, a loss, a batch function and an eval function. Names are imported on first use, so
that the command line reads its configs' fields (``fields``) without importing torch.
"""
from mambaseq import _lazy_names

# public name -> the module of this package that defines it
_MODULES = {
    "checkpoints": ("BEST", "load_model"),
    "config": ("TrainConfig", "check_resume_options", "check_resume_split"),
    "distributed": ("is_main_process", "resolve_device"),
    "fields": ("Config", "ConfigError", "Number", "option", "redefault", "positive_int",
               "non_negative_int", "positive_float", "non_negative_float", "fraction", "share",
               "share_below_one", "probability_mass", "seed_int", "quantizer_bits", "regex"),
    "loop": ("seed_everything", "train"),
    "out_folder": ("OutRefused",),
    "run_folders": ("run_folder",),
}
__getattr__, __all__ = _lazy_names(__name__, _MODULES)
