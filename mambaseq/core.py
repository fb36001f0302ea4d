"""Models: the selective SSM op, the Mamba block, backbones and heads.

Dimension names used across the package: B batch, L length, D d_model, E d_inner,
N d_state, G groups.
"""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

from mambaseq.core.cache import InferenceCache
from mambaseq.core.mamba import Mamba
from mambaseq.core.scan import selective_scan
from mambaseq.core.scan_reference import selective_scan_ref
from mambaseq.core.state_update import selective_state_update, selective_state_update_ref
from mambaseq.core.norm import RMSNorm
from mambaseq.core.backbone import MambaBackbone, MambaBackboneConfig
from mambaseq.core.bimamba import (BiMamba, BiMambaBackbone, BiMambaBackboneConfig,
                                   reverse_complement_hidden)
from mambaseq.core.heads import (MambaLM, MambaLMConfig, NgramEmbedding, RCEmbedding,
                                 SequenceClassifier, SequenceClassifierConfig, TokenModelConfig,
                                 mean_log_probs, pool_hidden, token_embedding)
from mambaseq.core.multiscale import (MultiscaleBackbone, MultiscaleBackboneConfig,
                                      get_pooling, linear_pooling, register_pooling)
from mambaseq.core.sampling import generate, sample_logits, top_k_filter, top_p_filter
from mambaseq.core.config import sub_config
from mambaseq.core.model_folder import load_pretrained, model_assets, register_model_class

__all__ = ["Mamba", "InferenceCache", "selective_scan", "selective_scan_ref",
           "selective_state_update", "selective_state_update_ref",
           "RMSNorm", "MambaBackbone", "MambaBackboneConfig",
           "BiMamba", "BiMambaBackbone", "BiMambaBackboneConfig", "reverse_complement_hidden",
           "MambaLM", "MambaLMConfig", "SequenceClassifier", "SequenceClassifierConfig",
           "NgramEmbedding", "RCEmbedding", "TokenModelConfig", "token_embedding", "pool_hidden",
           "mean_log_probs",
           "MultiscaleBackbone", "MultiscaleBackboneConfig",
           "register_pooling", "get_pooling",
           "linear_pooling", "generate", "sample_logits", "top_k_filter", "top_p_filter",
           "sub_config", "load_pretrained", "model_assets", "register_model_class"]
