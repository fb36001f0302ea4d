"""Building the config of a model's part from its own config, field by field, by name."""
from __future__ import annotations

import dataclasses


def sub_config(config_class, source, **overrides):
    """A ``config_class`` whose fields are those of the same name in the config ``source``
    (the others keep their defaults), then ``overrides``: never by position, so reordering
    the fields of either dataclass changes nothing.

    >>> from mambaseq.core import MambaBackboneConfig, MambaLMConfig
    >>> lm_config = MambaLMConfig(vocab_size=16, d_model=32, n_layer=2, d_state=8)
    >>> c = sub_config(MambaBackboneConfig, lm_config, chunk_size=64)
    >>> c.d_model, c.n_layer, c.d_state, c.chunk_size, hasattr(c, "vocab_size")
    (32, 2, 8, 64, False)
    """
    given = {f.name for f in dataclasses.fields(source)}
    shared = {f.name: getattr(source, f.name) for f in dataclasses.fields(config_class)
              if f.name in given}
    return config_class(**{**shared, **overrides})
