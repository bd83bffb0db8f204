"""A tiny random-weight SAM for tests, benchmarks and CPU smoke runs (docs/design.md, Masks in tests).

No SAM weights exist on the project's machines, and the real ViT-B takes over a minute per 640×480
image on one CPU. This builds the same architecture as ``segment_anything.build_sam`` – ViT image
encoder, prompt encoder, two-way-transformer mask decoder – only much smaller, so that the real
``SamAutomaticMaskGenerator`` runs end to end in a fraction of a second on a small image. Its masks
carry no meaning; random weights pass no quality threshold, so use it with ``pred_iou_thresh`` and
``stability_score_thresh`` set to 0.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def build_tiny_sam(
    seed: int = 0,
    img_size: int = 256,
    embed_dim: int = 64,
    depth: int = 2,
    prompt_embed_dim: int = 32,
) -> Sam:
    """Random-weight SAM: ``img_size`` input, ViT of ``depth`` blocks × ``embed_dim``, patch 16.

    ``seed`` fixes the weights, so two builds with the same arguments are the same model (the mask cache
    keys a builder config by its arguments when no checkpoint is given).
    """
    patch_size = 16
    embedding_size = img_size // patch_size
    # Seed a private generator instead of the global RNG so building the model has no side effects.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=2,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                qkv_bias=True,
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(depth - 1,),
                out_chans=prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_embed_dim,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_embed_dim, mlp_dim=4 * prompt_embed_dim, num_heads=2
                ),
                transformer_dim=prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=prompt_embed_dim,
            ),
        )
    return sam.eval()
