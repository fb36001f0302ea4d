"""The training layer every job shares: the loop, its config, checkpoints and model folders,
run folders (the out rule, the lock, config.json), distributed set-up and plots.

No argparse here, and no domain: errors name config fields, and a job hands the loop a
model, a loss, a batch function and an eval function.
"""
from .checkpoints import BEST, load_model
from .config import TrainConfig, check_resume_options, check_resume_split
from .distributed import is_main_process, resolve_device
from .fields import (Config, ConfigError, Number, fraction, non_negative_float,
                     non_negative_int, option, positive_float, positive_int, probability_mass,
                     quantizer_bits, redefault, regex, seed_int, share, share_below_one)
from .loop import seed_everything, train
from .out_folder import OutRefused
from .run_folder import run_folder

__all__ = [
    "TrainConfig", "train", "seed_everything", "run_folder", "OutRefused",
    "check_resume_options", "check_resume_split",
    "load_model", "BEST",
    "is_main_process", "resolve_device",
    "Config", "ConfigError", "Number", "option", "positive_int", "non_negative_int",
    "positive_float", "non_negative_float", "fraction", "share", "share_below_one",
    "probability_mass", "seed_int", "quantizer_bits", "regex", "redefault",
]
