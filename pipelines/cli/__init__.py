"""The ``mambaseq`` command line: flags -> config -> one job call -> print. Nothing else.

    mambaseq SUBCOMMAND [--config FILE] [--debug] [options]     (or python -m mambaseq.pipelines ...)

A subcommand is a module ``pipelines/cli/<name with _>.py`` that exposes

    HELP = "one line"                    # shown by ``mambaseq --help``
    CONFIG = PretrainGenomeConfig        # the job's config: every option comes from its fields
    def run(config) -> int | None: ...   # calls the job and prints; None means exit code 0

Options are generated from the config's fields (``cli.options``): one place for a name, its
default, its help and its rule. Modules are imported only when their subcommand runs (the
top-level help reads ``HELP`` from the source), so a broken module breaks its own subcommand
and nothing else.

``--config FILE`` (YAML or JSON mapping of field names, ``batch_size`` or ``batch-size``)
supplies any option; the command line overrides it. A job writes the options it ran with to
``<out>/config.json``, which can be given back as ``--config``. Errors are one line on stderr
and a non-zero exit code; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import contextlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from mambaseq.pipelines.training.fields import ConfigError

from .options import add_config_options, config_from_args, given_options, option_name

PROG = "mambaseq"

# Subcommand name -> module. Owners: genomics (pretrain-genome, eval-genome,
# classify-species, embed), audio (train-audio, generate-audio, eval-audio), bench, demo.
COMMANDS = {
    "pretrain-genome": "mambaseq.pipelines.cli.pretrain_genome",
    "eval-genome": "mambaseq.pipelines.cli.eval_genome",
    "classify-species": "mambaseq.pipelines.cli.classify_species",
    "predict-species": "mambaseq.pipelines.cli.predict_species",
    "embed": "mambaseq.pipelines.cli.embed",
    "train-audio": "mambaseq.pipelines.cli.train_audio",
    "generate-audio": "mambaseq.pipelines.cli.generate_audio",
    "eval-audio": "mambaseq.pipelines.cli.eval_audio",
    "train-word-classifier": "mambaseq.pipelines.cli.train_word_classifier",
    "score-audio": "mambaseq.pipelines.cli.score_audio",
    "bench": "mambaseq.pipelines.cli.bench",
    "demo": "mambaseq.pipelines.cli.demo",
    "convert": "mambaseq.pipelines.cli.convert",
    "simulate-genomes": "mambaseq.pipelines.cli.simulate_genomes",
}

# Options that steer the command line itself; never taken from nor saved to a config file.
_CLI_DESTS = ("help", "config", "debug")


class CommandUnavailable(RuntimeError):
    """A registered subcommand whose module is missing, fails to import, or lacks the API.

    ``reason`` is the short why (for listings); ``str(e)`` is the full one-line message.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"subcommand {name!r} is not available: {reason}")
        self.reason = reason


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps description line breaks."""


def load_command(name: str):
    """Import the module of subcommand ``name``.

    Returns:
        module with ``HELP``, ``add_arguments`` and ``run``.
    Raises:
        CommandUnavailable: unknown name, module missing, import error, or API missing.
    """
    if name not in COMMANDS:
        raise CommandUnavailable(name, f"unknown subcommand; choose from: {', '.join(COMMANDS)}")
    module_name = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise CommandUnavailable(name, f"module {module_name} is not written yet") from e
        raise CommandUnavailable(
            name, f"importing {module_name} failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise CommandUnavailable(
            name, f"importing {module_name} failed: {type(e).__name__}: {e}") from e
    missing = [a for a in ("HELP", "CONFIG", "run") if not hasattr(module, a)]
    if missing:
        raise CommandUnavailable(name, f"{module_name} lacks {', '.join(missing)}")
    return module


def build_parser(name: str, module) -> argparse.ArgumentParser:
    """The argparse parser of one subcommand: ``--config``, ``--debug`` + its config's fields."""
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=module.HELP,
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file of options (dest names); the command line "
                             "overrides it")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback on errors")
    add_config_options(parser, module.CONFIG)
    return parser


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON mapping of options from ``path``.

    Raises:
        ValueError: the file is missing, unreadable, not YAML/JSON, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:  # YAML is a superset of JSON, so any other name is read as YAML
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:
        raise ValueError(f"config file {path} cannot be parsed: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options, "
                         f"not a {type(data).__name__}")
    return data


def _convert(action: argparse.Action, key: str, value, path):
    """One config value checked and converted the way argparse would treat it on the command line."""
    where = f"config file {path}, option {key!r}"
    if action.nargs == 0:  # store_true / store_false / store_const flags
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.nargs in ("*", "+") and isinstance(value, str):
        value = [value]                       # one item of a list option, e.g. fasta: a.fa
    if isinstance(action.nargs, int) or action.nargs in ("*", "+"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert_one(action, where, v) for v in value]
    return _convert_one(action, where, value)


def _convert_one(action: argparse.Action, where: str, value):
    """A config value goes through the option's type exactly as its text would on the command
    line (``steps: true`` and ``seq_len: 128.7`` are refused like ``--steps true``)."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a single "
                             f"{getattr(action.type, '__name__', 'string').lstrip('_')} value, "
                             f"got {value!r}")
        text = value if isinstance(value, str) else repr(value)
        try:
            value = action.type(text) if action.type is not None else text
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{where}: invalid value {value!r}: {e}") from e
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def apply_config(parser: argparse.ArgumentParser, config: dict, path, command: str) -> None:
    """Make the options in ``config`` the parser's defaults (the command line still wins).

    Keys are dest names; dashes are accepted for underscores. A ``command`` key (as saved in
    ``config.json``) must name this subcommand.

    Raises:
        ValueError: an unknown key, a value of the wrong type, a choice not allowed.
    """
    actions = {a.dest: a for a in parser._actions if a.dest not in _CLI_DESTS}
    defaults = {}
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        if dest == "command":
            if value != command:
                raise ValueError(f"config file {path} is for subcommand {value!r}, not {command!r}")
            continue
        if dest not in actions:
            raise ValueError(f"config file {path}: unknown option {key!r} for {PROG} {command} "
                             f"(known: {', '.join(sorted(actions))})")
        defaults[dest] = _convert(actions[dest], key, value, path)
        actions[dest].required = False  # the file supplies it
    parser.set_defaults(**defaults)


def _summary(name: str) -> str:
    """The ``HELP`` line of a subcommand, read from its source without importing it (fast,
    and a module that fails to import still lists)."""
    spec = importlib.util.find_spec(COMMANDS[name])
    if spec is None or not spec.origin:
        return "(unavailable: not written yet)"
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)):
            return str(node.value.value)
    return "(no HELP line)"


def _top_help() -> str:
    lines = [f"usage: {PROG} SUBCOMMAND [--config FILE] [--debug] [options]",
             "",
             "Mamba (selective SSM) models on DNA and audio. "
             f"'{PROG} SUBCOMMAND --help' explains a subcommand's options.",
             "",
             "subcommands:"]
    width = max(map(len, COMMANDS)) + 2           # the longest name, then two spaces
    lines += [f"  {name:<{width}}{_summary(name)}" for name in COMMANDS]
    return "\n".join(lines)


def _close_progress_bars() -> None:
    """Close the progress bars a failed command left open, so that what is printed next
    starts on a line of its own and no bar is drawn after it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _error(prefix: str, message: str) -> None:
    """``prefix: error: message`` on stderr, below any progress bar."""
    _close_progress_bars()
    print(f"{prefix}: error: {message}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt: the same
    unwinding (locks released, no half-written checkpoint) and the same way back."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends it at once
    raise Terminated()


class _ReaderMayLeave:
    """sys.stdout or sys.stderr whose reader may go away (``mambaseq ... | head -1``):
    from then on what is written goes to os.devnull instead of raising BrokenPipeError
    where the command happens to print, so the command still finishes its files."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())    # the text still buffered goes there too
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _streams_whose_reader_may_leave():
    """stdout and stderr as ``_ReaderMayLeave``, flushed on the way out (so that nothing
    fails at exit either), then restored."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_ReaderMayLeave(s) if s is not None else s for s in streams)
    try:
        yield
    finally:
        for wrapped in (sys.stdout, sys.stderr):
            if wrapped is not None:
                wrapped.flush()
        sys.stdout, sys.stderr = streams


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises ``Terminated`` inside this block (main thread only; elsewhere Python
    cannot take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_depth = 0  # commands running in this process: demo runs the others through main()


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. ``argv`` defaults to ``sys.argv[1:]``; returns the exit code."""
    global _depth
    with _streams_whose_reader_may_leave():
        _depth += 1
        try:
            return _main(list(sys.argv[1:] if argv is None else argv))
        finally:
            _depth -= 1


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    debug = "--debug" in rest
    try:
        module = load_command(name)
    except CommandUnavailable as e:
        if debug:
            traceback.print_exc()
        _error(PROG, str(e))
        return 2

    parser = build_parser(name, module)
    prefix = f"{PROG} {name}"
    try:
        config_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        config_only.add_argument("--config")
        config_path = config_only.parse_known_args(rest)[0].config
        from_file = load_config_file(config_path) if config_path else {}
        if config_path:
            apply_config(parser, from_file, config_path, name)
    except ValueError as e:
        _error(prefix, str(e))
        return 2
    args = parser.parse_args(rest)  # exits with code 2 and a usage line on bad options
    try:
        given = given_options(parser, rest) | {str(k).replace("-", "_") for k in from_file}
        config = config_from_args(module.CONFIG, args, given)
    except ConfigError as e:
        _error(prefix, f"argument {option_name(module.CONFIG, e.field)}: {e.reason}")
        return 2
    except ValueError as e:                       # a check across fields, naming them
        _error(prefix, str(e))
        return 2
    except ValueError as e:                # a cross-field check of the config's __post_init__
        _error(prefix, str(e))
        return 2

    try:
        with _sigterm_interrupts():
            code = module.run(config)
    except KeyboardInterrupt as e:
        if _depth > 1:          # inside another command (demo): that one stops and says so
            raise
        terminated = isinstance(e, Terminated)
        _error(prefix, ("interrupted by SIGTERM" if terminated else "interrupted")
               + (" (continue with --resume)" if hasattr(config, "resume") else ""))
        return 143 if terminated else 130
    except Exception as e:  # one clear line unless --debug
        from mambaseq.pipelines.training.out_folder import OutRefused
        if debug:
            _close_progress_bars()
            traceback.print_exc()
        if type(e).__name__ == "OutOfMemoryError":
            _error(prefix, f"out of GPU memory ({e}); try a smaller --batch-size or "
                           "--seq-len, or a chunked mode")
        elif isinstance(e, OutRefused) and e.field is not None:    # name the flag
            _error(prefix, f"{option_name(module.CONFIG, e.field)} {e.reason}")
        else:
            _error(prefix, f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError))
                   else str(e))
        return 1
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
