"""``InferenceCache``: the recurrent state of every causal model, one type for all of them.

The cache is what ``model.allocate_cache(batch)`` returns and ``model.step(x_t, cache)``
updates in place, and also what ``model(x, state=cache, return_state=True)`` reads and returns
between two chunks of a long sequence: the state after a chunk is a cache that ``step``
continues from, and a cache ``step`` left (on a chunk boundary) is a state a chunk continues
from. Its size is fixed by the model and the batch, whatever the length read.

A cache is a tree that mirrors the model (a block's ``conv``/``ssm`` tensors, a backbone's
``layers``, a U-Net's stages and poolings); each model's ``allocate_cache`` documents its
entries and their shapes.
"""
from __future__ import annotations

import torch


class InferenceCache:
    """Named entries of a model's recurrent state, read and written as attributes.

    Entries (keyword arguments):
        tensors: the state itself; ``reset`` zeroes them in place.
        ints: positions inside a pooling window; ``reset`` sets them to 0.
        ``InferenceCache`` entries, or lists of them: the caches of the model's parts.
        anything else (None, a step kernel's scratch): not state; ``reset`` leaves it and
            ``clone`` does not copy it (None in the copy).

    >>> from mambaseq.core import MambaLM, MambaLMConfig
    >>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=1))
    >>> cache = lm.allocate_cache(2); cache
    InferenceCache(layers=[InferenceCache(conv=Tensor(2, 64, 3), ssm=Tensor(2, 64, 16), work=None)])
    >>> ids = torch.randint(0, 16, (2, 8))
    >>> lm.step(ids[:, 0], cache).shape           # (B, V); the cache is updated in place
    torch.Size([2, 16])
    >>> ssm = cache.layers[0].ssm; bool(ssm.any())
    True
    >>> cache.reset().layers[0].ssm is ssm, bool(ssm.any())   # zeros, same tensors: a new sequence
    (True, False)
    """

    def __init__(self, **entries):
        self.__dict__.update(entries)

    def __repr__(self):
        def show(v):
            if isinstance(v, torch.Tensor):
                return f"Tensor{tuple(v.shape)}"
            if isinstance(v, list):
                return f"[{', '.join(show(x) for x in v)}]"
            return repr(v)
        return f"InferenceCache({', '.join(f'{k}={show(v)}' for k, v in vars(self).items())})"

    def reset(self) -> "InferenceCache":
        """Zero the state in place (no new tensors), so that a generation restarts from the
        empty context with the memory already allocated; returns the cache."""
        for name, value in vars(self).items():
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, 0)
            else:
                _reset(value)
        return self

    def clone(self) -> "InferenceCache":
        """A copy with its own contiguous tensors (e.g. to ``step`` from the state a
        ``forward(..., return_state=True)`` returned without writing into its tensors)."""
        return InferenceCache(**{name: _clone(value) for name, value in vars(self).items()})

    def numel(self) -> int:
        """Number of elements of all the state tensors (the cache's size)."""
        return sum(_numel(value) for value in vars(self).values())


def _reset(value):
    if isinstance(value, torch.Tensor):
        value.zero_()
    elif isinstance(value, InferenceCache):
        value.reset()
    elif isinstance(value, list):
        for v in value:
            _reset(v)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone(memory_format=torch.contiguous_format)
    if isinstance(value, InferenceCache):
        return value.clone()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, int):
        return value
    return None


def _numel(value):
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, InferenceCache):
        return value.numel()
    if isinstance(value, list):
        return sum(_numel(v) for v in value)
    return 0
