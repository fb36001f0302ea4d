"""Validation of selective-scan arguments, shared by every backend.

Dimension names: B batch, E d_inner, N d_state, G groups, L length.
"""
from __future__ import annotations


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None):
    """Raise ValueError naming the argument whose shape, device or grouping is wrong.

    Returns:
        (batch, d_inner, length, d_state, groups)
    """
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must be (d_inner={d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    expected = {"delta": (u.shape, delta), "z": (u.shape, z),
                "D": ((d_inner,), D), "delta_bias": ((d_inner,), delta_bias),
                "initial_state": ((batch, d_inner, d_state), initial_state)}
    for name, (shape, tensor) in expected.items():
        if tensor is not None and tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"selective_scan: {name} must have shape {tuple(shape)}, "
                             f"got {tuple(tensor.shape)}")
    groups = None
    for name, tensor in (("B", B), ("C", C)):
        if tensor.dim() == 3:
            shape_ok, g = tuple(tensor.shape) == (batch, d_state, length), 1
        elif tensor.dim() == 4:
            g = tensor.shape[1]
            shape_ok = tuple(tensor.shape) == (batch, g, d_state, length)
        else:
            shape_ok, g = False, None
        if not shape_ok:
            raise ValueError(f"selective_scan: {name} must be (batch={batch}, d_state={d_state}, "
                             f"L={length}) or (batch, groups, d_state, L), got {tuple(tensor.shape)}")
        if g < 1 or d_inner % g != 0:
            raise ValueError(f"selective_scan: {name} has {g} groups, which do not divide "
                             f"d_inner={d_inner}")
        if groups is not None and g != groups:
            raise ValueError(f"selective_scan: B has {groups} groups but C has {g}")
        groups = g
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
               "delta_bias": delta_bias, "initial_state": initial_state}
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"selective_scan: all tensors must be on one device, got {listing}")
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
    return batch, d_inner, length, d_state, groups
