"""Vision Transformer teachers for 112x112 faces, built on timm."""

from __future__ import annotations

import timm
import torch
from torch import nn

from teachers.registry import register_teacher


class ViTFace(nn.Module):
    """A timm ViT over 112x112 faces, mean of patch tokens -> BN -> linear -> BN embedding."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 8,
        embedding_size: int = 512,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            img_size=112,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_classes=0,
            global_pool="avg",
            class_token=False,
            drop_path_rate=drop_path_rate,
        )
        self.head = nn.Sequential(
            nn.BatchNorm1d(embed_dim),
            nn.Linear(embed_dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.embedding_size = embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register_teacher("vit_face_micro")
def vit_face_micro(embedding_size: int = 128, patch_size: int = 16) -> ViTFace:
    """A 4-layer, 128-wide ViT: the demo's teacher, trainable on a laptop CPU in minutes."""
    return ViTFace(128, 4, 4, patch_size, embedding_size)


@register_teacher("vit_face_tiny")
def vit_face_tiny(embedding_size: int = 512, patch_size: int = 8) -> ViTFace:
    """ViT-Ti (192 wide, 12 layers, 3 heads), patch 8 -> 196 tokens at 112 px."""
    return ViTFace(192, 12, 3, patch_size, embedding_size, drop_path_rate=0.1)


@register_teacher("vit_face_small")
def vit_face_small(embedding_size: int = 512, patch_size: int = 8) -> ViTFace:
    """ViT-S (384 wide, 12 layers, 6 heads), patch 8."""
    return ViTFace(384, 12, 6, patch_size, embedding_size, drop_path_rate=0.1)


@register_teacher("vit_face_base")
def vit_face_base(embedding_size: int = 512, patch_size: int = 8) -> ViTFace:
    """ViT-B (768 wide, 12 layers, 12 heads), patch 8."""
    return ViTFace(768, 12, 12, patch_size, embedding_size, drop_path_rate=0.1)
