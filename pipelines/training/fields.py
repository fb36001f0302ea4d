"""Config fields that carry their help and their rule: one place for a name, its default,
its help and the values it takes.

Every job's config is a keyword-only dataclass built from :func:`option` fields. A Python
caller gets every check when the config is built (:class:`Config` runs them in
``__post_init__``); the command line (``pipelines.cli.options``) generates its flags from the
same fields: ``--name-with-dashes``, the default, the help, the rule as the argparse type.

    @dataclass(kw_only=True)
    class EvalConfig(Config):
        model: str = option(help="model folder")
        chunk_len: int = option(2 ** 14, rule=positive_int, help="bases per forward chunk")

    EvalConfig(model="m", chunk_len=0)
    # ConfigError: EvalConfig.chunk_len must be a positive integer, got 0

No argparse here: errors name config fields; the command line names its flags.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config field holds a value it does not take.

    Attributes:
        field: the field's name (the command line turns it into its flag).
        reason: "must be ..., got ..." without the field's name.
    """

    def __init__(self, owner: str, field: str, reason: str):
        super().__init__(f"{owner}.{field} {reason}")
        self.field, self.reason = field, reason


class Number:
    """The rule of a numeric field: its kind (int or float) and its range.

    A float must be finite (nan and inf are refused); an int must be an int (not a bool).

    Args:
        name: the rule's name (for ``repr``).
        kind: ``int`` or ``float``.
        low, high: the bounds (None: unbounded); ``low_open``/``high_open`` exclude them.
        what: the rule in words, for messages (default: made from the bounds).
    """

    def __init__(self, name: str, kind: type, low=None, high=None, *, low_open=False,
                 high_open=False, what: str | None = None):
        self.__name__, self.kind = name, kind
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.what = what or self._describe()

    def _describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low}, {self.high}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return noun

    def fits(self, value) -> bool:
        """Whether ``value`` (a Python number) follows the rule."""
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int
                                                     else (int, float)):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high
                                         or self.high_open and value == self.high)

    def check(self, value) -> None:
        """Raises ValueError("must be <rule>, got <value>") unless ``value`` fits."""
        if not self.fits(value):
            raise ValueError(f"must be {self.what}, got {value!r}")

    def parse(self, text: str):
        """The number written in ``text``, checked (ValueError "must be ..., got ...")."""
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"must be {self.what}, got {text}") from None
        self.check(value)
        return value

    def __repr__(self) -> str:
        return f"<{self.__name__}: {self.what}>"


# The rules the configs share.
positive_int = Number("positive_int", int, 1, what="a positive integer")
non_negative_int = Number("non_negative_int", int, 0)
positive_float = Number("positive_float", float, 0, low_open=True)
non_negative_float = Number("non_negative_float", float, 0)
fraction = Number("fraction", float, 0, 1, low_open=True, high_open=True)   # a share, (0, 1)
share = Number("share", float, 0, 1)                                        # [0, 1]
share_below_one = Number("share_below_one", float, 0, 1, high_open=True)    # [0, 1)
probability_mass = Number("probability_mass", float, 0, 1, low_open=True)  # (0, 1]
seed_int = Number("seed_int", int, 0, 2 ** 32 - 1)        # numpy's seed range
quantizer_bits = Number("quantizer_bits", int, 1, 16)     # mamba_audio.quantize's range


class Regex:
    """The rule of a field holding a Python regular expression (kept as text)."""

    what = "a valid regular expression"

    def check(self, value) -> None:
        try:
            re.compile(value)
        except (re.error, TypeError) as err:
            raise ValueError(f"must be a valid regular expression: {err}") from None

    def parse(self, text: str) -> str:
        self.check(text)
        return text


regex = Regex()


def option(default: Any = dataclasses.MISSING, *, help: str, rule=None,
           choices: tuple | None = None, metavar: str | tuple | None = None,
           flags: tuple[str, ...] | None = None, positional: bool = False,
           nargs: str | int | None = None, cli: bool = True) -> Any:
    """A config field with its help and its rule.

    Args:
        default: the default (omit for a required field; a list or tuple default is copied
            for every instance).
        help: one line for the documentation and ``--help`` (the default is shown beside it).
        rule: a :class:`Number` (or another object with ``check(value)`` and
            ``parse(text)``) applied to the value, or to every item of a list.
        choices: the values allowed.
        metavar, flags, positional, nargs: the command line's spelling, when the generated
            one (``--field-name``, one value, or one or more for a list) does not fit.
        cli: False for a field the command line does not offer.
    """
    meta = {"help": help, "rule": rule, "choices": choices, "metavar": metavar,
            "flags": flags, "positional": positional, "nargs": nargs, "cli": cli}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def redefault(config_cls, name: str, default: Any, **changes) -> Any:
    """Field ``name`` of ``config_cls`` again, with another default (and any of
    :func:`option`'s other arguments changed): how a job config changes a shared option's
    default without writing its help and rule a second time.

    >>> from mambaseq.pipelines.training import TrainConfig
    >>> @dataclasses.dataclass(kw_only=True)
    ... class Short(TrainConfig):
    ...     steps: int = redefault(TrainConfig, "steps", 50)
    >>> Short(out="o").steps, Short.__dataclass_fields__["steps"].metadata["help"]
    (50, 'optimizer steps in the whole run')
    """
    meta = {**config_cls.__dataclass_fields__[name].metadata, **changes}
    return option(default, **meta)


_SCALARS = {int: int, float: (int, float), str: str, bool: bool}


def value_kind(hint) -> tuple[type | None, bool]:
    """(scalar type of a field or of its items, whether it is a list/tuple) from its hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return value_kind(args[0])
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return (inner[0] if inner and inner[0] in _SCALARS else None), True
    return (hint if hint in _SCALARS else None), False


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base of every job config: checks each field's type, choices and rule when built.

    Raises:
        ConfigError: naming the first field whose value is refused.
    """

    def __post_init__(self):
        owner = type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            kind, many = value_kind(hints[f.name])
            if many and not isinstance(value, (list, tuple)):
                raise ConfigError(owner, f.name, f"must be a list, got {value!r}")
            items = value if many else [value]
            for item in items:
                if kind is not None and (not isinstance(item, _SCALARS[kind])
                                         or isinstance(item, bool) != (kind is bool)):
                    raise ConfigError(owner, f.name,
                                      f"must be {kind.__name__}, got {item!r}")
                choices = f.metadata.get("choices")
                if choices is not None and item not in choices:
                    raise ConfigError(owner, f.name, f"must be one of "
                                      f"{', '.join(map(str, choices))}, got {item!r}")
                rule = f.metadata.get("rule")
                if rule is not None:
                    try:
                        rule.check(item)
                    except ValueError as err:
                        raise ConfigError(owner, f.name, str(err)) from None

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (tuples as lists), e.g. for ``config.json``."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value):
    """``value`` with tuples as lists and paths as strings, for JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
