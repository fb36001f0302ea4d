"""A job config's fields as command-line options: the flags are generated, never written.

Each field of a config dataclass built with ``training.fields.option`` becomes one option:
``--field-name`` (or the field's ``flags``; a ``positional`` field is an argument), its
default and help, its rule as the argparse type (a bad value is refused by argparse, naming
the option), its choices. A bool that defaults to False is a switch (``--resume``); one that
defaults to True gets ``--name``/``--no-name``. A list takes one or more values (``nargs``
overrides). Fields are grouped by the config class that declares them (``training`` for
``TrainConfig``'s).

    parser = argparse.ArgumentParser()
    add_config_options(parser, PretrainGenomeConfig)
    config = config_from_args(PretrainGenomeConfig, parser.parse_args(argv))
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from mambaseq.pipelines.training.fields import value_kind


def flag(name: str) -> str:
    """The flag of config field ``name``: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _argparse_type(kind, rule):
    """argparse ``type``: the text as ``kind``, checked by ``rule``; a refused value is an
    ArgumentTypeError (argparse then names the option and exits 2)."""
    parse = rule.parse if rule is not None else kind

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) if rule is not None else
                                             f"must be {kind.__name__}, got {text}") from None
    convert.__name__ = getattr(rule, "__name__", getattr(kind, "__name__", "value"))
    return convert


def _declaring_class(config_cls, name: str):
    """The class of ``config_cls``'s MRO that declares field ``name`` first."""
    for cls in reversed(config_cls.__mro__):
        if name in getattr(cls, "__annotations__", {}):
            return cls
    return config_cls


def add_config_options(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one option per command-line field of ``config_cls`` to ``parser``."""
    hints = typing.get_type_hints(config_cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", True) or "help" not in meta:
            continue
        owner = _declaring_class(config_cls, f.name)
        title = getattr(owner, "OPTIONS_GROUP", owner.__name__)
        group = groups.setdefault(title, parser.add_argument_group(title))
        kind, many = value_kind(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (None if required else f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())
        kwargs = {"help": meta["help"]}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind is bool and not many:
            kwargs["action"] = (argparse.BooleanOptionalAction if default
                                else "store_true")
            kwargs["default"] = bool(default)
        else:
            if kind is not None:
                kwargs["type"] = _argparse_type(kind, meta.get("rule"))
            if meta.get("choices") is not None:
                kwargs["choices"] = meta["choices"]
            if many:
                kwargs["nargs"] = meta.get("nargs") or "+"
            elif meta.get("nargs") is not None:
                kwargs["nargs"] = meta["nargs"]
            if not meta.get("positional"):
                kwargs["default"] = default
                kwargs["required"] = required
        if meta.get("positional"):
            group.add_argument(f.name, **kwargs)
        else:
            group.add_argument(*(meta.get("flags") or (flag(f.name),)), dest=f.name, **kwargs)


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options ``argv`` names itself (``--lr 1e-3``, ``--lr=1e-3``); an
    option left at its default is not among them."""
    given = set()
    for word in argv:
        action = parser._option_string_actions.get(word.split("=", 1)[0])
        if word.startswith("-") and action is not None:
            given.add(action.dest)
    return given


def config_from_args(config_cls, args: argparse.Namespace, given: set[str] | None = None):
    """``config_cls`` built from the parsed options (the fields the command line offers).

    A config with presets (a ``preset`` field and ``from_preset``): with a preset named,
    only the options in ``given`` (named on the command line or in the ``--config`` file)
    are set on top of the preset's values; an option given at its ordinary default still
    wins over the preset.

    Raises:
        fields.ConfigError: a value the config refuses (naming the field; the command line
            shows its flag, :func:`option_name`).
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
              if hasattr(args, f.name)}
    for f in dataclasses.fields(config_cls):       # lists arrive as lists; tuples stay tuples
        if isinstance(values.get(f.name), list) and isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    preset = values.get("preset")
    if preset and given is not None and hasattr(config_cls, "from_preset"):
        return config_cls.from_preset(preset, **{k: v for k, v in values.items()
                                                 if k in given and k != "preset"})
    return config_cls(**values)


def option_name(config_cls, field: str) -> str:
    """The flag (or argument name) that sets ``field`` of ``config_cls``."""
    meta = (config_cls.__dataclass_fields__[field].metadata
            if field in config_cls.__dataclass_fields__ else {})
    if meta.get("positional"):
        return field.upper()
    return (meta.get("flags") or (flag(field),))[0]
