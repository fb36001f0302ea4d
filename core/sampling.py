"""Sampling: next-token logits into tokens (temperature, top-k, top-p), and the one
generation loop of every causal model (``generate``).

Dimension names: B batch, V vocabulary, L0 prompt length.
"""
from __future__ import annotations

import torch

from .backbone import lengths_from_mask


def top_k_filter(logits, k):
    """Keep the ``k`` largest logits of each row, set the rest to -inf.

    Args:
        logits: (..., V).  k (int): 1 <= k; k >= V keeps everything.
    Ties at the k-th value are all kept.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of most probable tokens
    whose probabilities sum to at least ``p``; the rest become -inf. The most probable token
    is always kept.

    Args:
        logits: (..., V).  p (float): 0 < p <= 1.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs          # mass of the tokens ranked above each one
    drop_sorted = before >= p                  # already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw one token per row from (B, V) logits.

    Args:
        temperature (float, 1.0): logits are divided by it; 0 means greedy (argmax).
        top_k (int, optional), top_p (float, optional): filters applied after the
            temperature, top-k first.
        generator (torch.Generator, optional): for reproducible draws.

    Returns:
        (B,) long token ids.

    >>> logits = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    >>> sample_logits(logits, temperature=0)                 # greedy: each row's argmax
    tensor([1, 0])
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_logits(logits, temperature=0.8, top_p=0.95, generator=g)  # top-p keeps one each
    tensor([1, 0])
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompt_lengths(prompt_ids, lengths=None, mask=None):
    """The real length (B,) long of each right-padded prompt: from ``lengths`` or ``mask``,
    else all L0. Raises ValueError when both are given or a length is outside [1, L0]."""
    batch, length = prompt_ids.shape
    if lengths is not None and mask is not None:
        raise ValueError("generate: give lengths or mask, not both")
    if mask is not None:
        lengths = lengths_from_mask(mask, length)
    if lengths is None:
        return torch.full((batch,), length, dtype=torch.long, device=prompt_ids.device)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=prompt_ids.device)
    if lengths.shape != (batch,):
        raise ValueError(f"generate: lengths must be ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > length).any()):
        raise ValueError(f"generate: every prompt length must be in [1, {length}], got "
                         f"{lengths.tolist()}")
    return lengths


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             generator=None, lengths=None, mask=None, pad_id=0, prefill="forward",
             on_step=None):
    """Continue each prompt of ``prompt_ids`` (B, L0) by ``max_new_tokens`` tokens sampled
    from ``model``: the generation loop of every causal model of the toolkit.

    ``model`` has ``allocate_cache(B)`` and ``step(ids_t (B,), cache) -> logits (B, V)``, and,
    for ``prefill="forward"``, ``model(ids (B, L), return_state=True) -> (logits (B, L, V),
    cache)``. Prompts of different lengths come right-padded to L0 with their ``lengths``
    (or a padding ``mask``); each row continues from its own last real token. The common
    prefix (the shortest prompt) is read first; after it, every row advances one ``step``
    per token, feeding its own prompt while it lasts and its samples after: O(1) time and
    memory per token, and a row's tokens are those it would get generated alone (greedy; a
    sampled row draws from the same distribution, not the same random numbers).

    Args:
        temperature (float, 1.0): 0 = greedy.  top_k (int), top_p (float): filters.
        generator (torch.Generator, optional): same generator state, same output.
        lengths (B,) ints in [1, L0], optional: real length of each prompt.
        mask (B, L0), optional: True on real prompt tokens (right-padded), instead of
            ``lengths``.
        pad_id (int, 0): fills each row after its last token.
        prefill (str, "forward"): how the common prefix is read: "forward", one parallel
            (chunked if long) forward that returns the cache; "step", one ``step`` per token
            (the tokens then depend on the step path alone).
        on_step (callable, optional): ``on_step(pos)`` after each ``step`` of the model
            (pos: the output position it read) and after the last token is drawn (pos =
            L0 + max_new_tokens - 1, never stepped); e.g. a progress bar or a clock.

    Returns:
        (B, L0 + max_new_tokens) long: row i holds its lengths[i] prompt tokens, its
        ``max_new_tokens`` new ones, then ``pad_id`` (none without lengths/mask).

    >>> from mambaseq.core import MambaLM, MambaLMConfig
    >>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2))
    >>> padded = torch.randint(1, 16, (2, 30)); padded[0, 12:] = 0   # prompts of 12 and 30
    >>> out = generate(lm, padded, 5, temperature=0, lengths=torch.tensor([12, 30]))
    >>> out.shape
    torch.Size([2, 35])
    >>> torch.equal(out[0, :12], padded[0, :12]), out[0, 17:].eq(0).all().item()  # pad after
    (True, True)
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (batch, length >= 1), got "
                         f"{tuple(prompt_ids.shape)}")
    if prefill not in ("forward", "step"):
        raise ValueError(f"prefill must be 'forward' or 'step', got {prefill!r}")
    batch, length = prompt_ids.shape
    lengths = prompt_lengths(prompt_ids, lengths, mask)
    start = int(lengths.min())
    if prefill == "forward":
        logits, state = model(prompt_ids[:, :start], return_state=True)
        cache, logits_t = state.clone(), logits[:, -1]
    else:
        cache = model.allocate_cache(batch)
        for pos in range(start):
            logits_t = model.step(prompt_ids[:, pos], cache)                    # (B, V)
            if on_step is not None:
                on_step(pos)
    out = prompt_ids.new_full((batch, length + max_new_tokens), pad_id)
    out[:, :length] = prompt_ids
    last = lengths + max_new_tokens                # (B,) one past each row's last token
    n_steps = length - start + max_new_tokens      # tokens placed after the prefix
    # between these positions every row draws its token: no prompt to feed, no padding
    all_free, none_done = int(lengths.max()), int(last.min())
    for i in range(n_steps):
        pos = start + i
        if all_free <= pos < none_done:
            tok = sample_logits(logits_t, temperature, top_k, top_p, generator)      # (B,)
            out[:, pos] = tok
        else:
            in_prompt = pos < lengths                                            # (B,)
            tok = out[:, pos].clone() if pos < length else out.new_zeros(batch)
            if bool(in_prompt.all()):
                pass
            elif not bool(in_prompt.any()):
                tok = sample_logits(logits_t, temperature, top_k, top_p, generator)
            else:
                free = ~in_prompt
                tok[free] = sample_logits(logits_t[free], temperature, top_k, top_p,
                                          generator)
            out[:, pos] = torch.where(pos < last, tok, out.new_tensor(pad_id))
        if i + 1 < n_steps:
            logits_t = model.step(tok, cache)
        if on_step is not None:
            on_step(pos)
    return out
