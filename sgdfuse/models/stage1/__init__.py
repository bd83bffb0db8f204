"""Stage I of SGDFuse: structural fusion network and its blocks."""

from sgdfuse.models.stage1.cfc import CFC
from sgdfuse.models.stage1.cross_attention_fusion import CrossAttentionFusion
from sgdfuse.models.stage1.fusion_net import FusionNet
from sgdfuse.models.stage1.msfem import MSFEM
from sgdfuse.models.stage1.transformer_block import TransformerBlock

__all__ = ["CFC", "CrossAttentionFusion", "FusionNet", "MSFEM", "TransformerBlock"]
