"""Independent forwards of published Mamba models, written from their code's semantics
(mamba_ssm ``Mamba.forward`` slow path and ``MambaLMHeadModel``, Caduceus's
``CaduceusForMaskedLM``), straight from a state dict with a sequential scan: the oracles of
the converter tests. Nothing here uses the toolkit's modules.

Dimension names: B batch, L length, D width, E d_inner, N d_state, R dt_rank.
"""
import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps=1e-5):
    """x (..., D) / rms * weight."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba_mixer(w, x):
    """One Mamba-1 mixer from its tensors ``w`` (names as in mamba_ssm): x (B, L, D) -> (B, L, D)."""
    E = w["D"].shape[0]
    N = w["A_log"].shape[1]
    K = w["conv1d.weight"].shape[-1]
    xz = x @ w["in_proj.weight"].T + (w["in_proj.bias"] if "in_proj.bias" in w else 0)
    xs, z = xz[..., :E], xz[..., E:]                                   # (B, L, E)
    padded = F.pad(xs.transpose(1, 2), (K - 1, 0))                     # (B, E, K-1+L)
    conv = sum(padded[..., k:k + x.shape[1]] * w["conv1d.weight"][:, 0, k, None]
               for k in range(K))
    if "conv1d.bias" in w:
        conv = conv + w["conv1d.bias"][:, None]
    u = F.silu(conv).transpose(1, 2)                                   # (B, L, E)
    dbc = u @ w["x_proj.weight"].T
    R = dbc.shape[-1] - 2 * N
    dt, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
    delta = F.softplus(dt @ w["dt_proj.weight"].T + w["dt_proj.bias"])  # (B, L, E)
    A = -torch.exp(w["A_log"])                                         # (E, N)
    h = x.new_zeros(x.shape[0], E, N)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h \
            + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + w["D"] * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ w["out_proj.weight"].T + (w["out_proj.bias"] if "out_proj.bias" in w else 0)


def sub(state, prefix):
    """The tensors under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def mamba_lm_head_model(state, n_layer, ids, eps=1e-5):
    """mamba_ssm ``MambaLMHeadModel`` (rms_norm, tied): ids (B, L) -> logits (B, L, V_padded)."""
    emb = state["backbone.embedding.weight"]
    hidden, residual = emb[ids], None
    for i in range(n_layer):
        residual = hidden if residual is None else hidden + residual
        normed = rms_norm(residual, state[f"backbone.layers.{i}.norm.weight"], eps)
        hidden = mamba_mixer(sub(state, f"backbone.layers.{i}.mixer."), normed)
    out = rms_norm(hidden + residual, state["backbone.norm_f.weight"], eps)
    return out @ emb.T


def _bimamba(state, prefix, x):
    """Caduceus ``BiMambaWrapper`` ("add", tied in/out projections)."""
    fwd = sub(state, prefix + "mamba_fwd.")
    rev = {**sub(state, prefix + "mamba_rev."),
           **{k: v for k, v in fwd.items() if k.split(".")[0] in ("in_proj", "out_proj")}}
    return mamba_mixer(fwd, x) + mamba_mixer(rev, x.flip(1)).flip(1)


def _rc(x):
    return x.flip(-2, -1)


def caduceus_masked_lm(state, config, ids):
    """``CaduceusForMaskedLM``: ids (B, L) in Caduceus's ids -> logits (B, L, V_padded)."""
    p, eps, D = "caduceus.backbone.", config.get("norm_epsilon", 1e-5), config["d_model"]
    rcps, fused = config.get("rcps", False), config.get("fused_add_norm", True)
    if rcps:
        emb = state[p + "embeddings.word_embeddings.embedding.weight"]
        comp = torch.arange(emb.shape[0])
        for k, v in config["complement_map"].items():
            comp[int(k)] = int(v)
        hidden = torch.cat([emb[ids], _rc(emb[comp[ids.flip(-1)]])], -1)   # (B, L, 2D)
    else:
        emb = state[p + "embeddings.word_embeddings.weight"]
        hidden = emb[ids]
    residual = None
    for i in range(config["n_layer"]):
        layer = f"{p}layers.{i}."
        R = hidden if residual is None else hidden + residual
        if not rcps:
            residual, normed = R, rms_norm(R, state[layer + "norm.weight"], eps)
            hidden = _bimamba(state, layer + "mixer.", normed)
            continue
        if fused:    # Caduceus's fused path: the second half is normalised as the forward one
            w = state[layer + "norm.weight"]
            normed = torch.cat([rms_norm(R[..., D:], w, eps),
                                _rc(rms_norm(_rc(R[..., :D]), w, eps))], -1)
            residual = torch.cat([R[..., D:], _rc(_rc(R[..., :D]))], -1)
        else:
            w = state[layer + "norm.submodule.weight"]
            normed = torch.cat([rms_norm(R[..., :D], w, eps),
                                _rc(rms_norm(_rc(R[..., D:]), w, eps))], -1)
            residual = R
        mixer = layer + "mixer.submodule."
        hidden = torch.cat([_bimamba(state, mixer, normed[..., :D]),
                            _rc(_bimamba(state, mixer, _rc(normed[..., D:])))], -1)
    R = hidden + residual
    if not rcps:
        return rms_norm(R, state[p + "norm_f.weight"], eps) @ emb.T
    w = state[p + ("norm_f.weight" if fused else "norm_f.submodule.weight")]
    out = torch.cat([rms_norm(R[..., :D], w, eps), _rc(rms_norm(_rc(R[..., D:]), w, eps))], -1)
    return out[..., :D] @ emb.T + out[..., D:].flip(-1) @ emb[comp].T
