"""Models: the selective SSM op, the Mamba block, backbones and heads.

Dimension names used across the package: B batch, L length, D d_model, E d_inner,
N d_state, G groups.
"""
from .mamba import Mamba, MambaState
from .scan import selective_scan
from .scan_reference import selective_scan_ref
from .state_update import selective_state_update, selective_state_update_ref

__all__ = ["Mamba", "MambaState", "selective_scan", "selective_scan_ref",
           "selective_state_update", "selective_state_update_ref"]
