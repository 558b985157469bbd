"""Inverted-bottleneck families: `mobilenetv2` (optional squeeze-excitation, seed 001) and `mobilefacenet`.

Both stack the same `InvertedResidual` block (1x1 expand -> 3x3 depthwise -> [SE] -> 1x1 linear project);
MobileFaceNet (Chen et al. 2018) swaps ReLU6 for PReLU and global average pooling for a global
depthwise convolution (GDC), which keeps where in the face a feature fired.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from core.errors import require
from core.models.base import Activation, EmbeddingNet, check_common, conv_bn, gdc_pool, prelu, relu6, scale_channels
from core.models.registry import register_model

Stage = Sequence[int]  # (expansion t, channels c, blocks n, first stride s), as in the papers' tables

MOBILENETV2_STAGES: tuple[Stage, ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILEFACENET_STAGES: tuple[Stage, ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al.); (B, C, H, W) -> same shape."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        squeezed = max(8, channels // reduction)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class InvertedResidual(nn.Module):
    """(B, cin, H, W) -> (B, cout, H/stride, W/stride); residual when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, act: Activation, se: bool) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        # Linear projection: a ReLU on the narrow output would destroy information (the MobileNetV2 paper).
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout  # fixed at build time, so no data-dependent branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def inverted_stages(
    cin: int, stages: Sequence[Stage], width: float, act: Activation, se: bool
) -> tuple[nn.Sequential, int]:
    """Blocks for a (t, c, n, s) table, channels scaled by width; returns (blocks, output channels)."""
    require(
        len(stages) > 0 and all(len(s) == 4 for s in stages),
        f"model.stages must be a non-empty list of [expansion, channels, blocks, stride], got {stages}",
    )
    blocks: list[nn.Module] = []
    for t, c, n, s in stages:
        require(t >= 1 and c >= 1 and n >= 1 and s in (1, 2), f"model.stages: bad stage {list((t, c, n, s))}")
        cout = scale_channels(c, width)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, act, se))
            cin = cout
    return nn.Sequential(*blocks), cin


@register_model("mobilenetv2")
class MobileNetV2(EmbeddingNet):
    """MobileNetV2 (Sandler et al. 2018), optionally with squeeze-excitation in every block.

    stem_stride 1 (default) suits 64-112 px inputs (total stride 16: 112 px -> 7x7); 2 is the ImageNet
    stem. stages: (t, c, n, s) rows, default the paper's table. last_channels: the final 1x1 conv,
    widened (never narrowed) by width > 1 as in the paper.
    """

    def __init__(
        self,
        num_classes: int = 0,
        embedding_dim: int = 128,
        dropout: float = 0.0,
        width: float = 1.0,
        in_channels: int = 3,
        se: bool = False,
        stem_stride: int = 1,
        stages: Sequence[Stage] = MOBILENETV2_STAGES,
        last_channels: int = 1280,
    ) -> None:
        check_common(num_classes, embedding_dim, dropout, width, in_channels)
        require(stem_stride in (1, 2), f"model.stem_stride must be 1 or 2, got {stem_stride}")
        require(last_channels >= 1, f"model.last_channels must be >= 1, got {last_channels}")
        stem = scale_channels(32, width)
        blocks, cout = inverted_stages(stem, stages, width, relu6, se)
        last = scale_channels(last_channels, max(1.0, width))
        trunk = nn.Sequential(
            conv_bn(in_channels, stem, 3, stem_stride, act=relu6),
            blocks,
            conv_bn(cout, last, 1, act=relu6),
        )
        super().__init__(trunk, last, num_classes=num_classes, embedding_dim=embedding_dim, dropout=dropout)


@register_model("mobilefacenet")
class MobileFaceNet(EmbeddingNet):
    """MobileFaceNet: PReLU inverted bottlenecks, 512-channel 1x1 conv, GDC, linear 1x1 (the neck).

    gdc_size: the GDC kernel. The last map is 7x7 at the paper's 112 px; other sizes are first
    resampled to gdc_size x gdc_size by adaptive average pooling so any input >= 32 px works.
    """

    def __init__(
        self,
        num_classes: int = 0,
        embedding_dim: int = 128,
        dropout: float = 0.0,
        width: float = 1.0,
        in_channels: int = 3,
        se: bool = False,
        stages: Sequence[Stage] = MOBILEFACENET_STAGES,
        gdc_size: int = 7,
    ) -> None:
        check_common(num_classes, embedding_dim, dropout, width, in_channels)
        require(gdc_size >= 1, f"model.gdc_size must be >= 1, got {gdc_size}")
        stem = scale_channels(64, width)
        blocks, cout = inverted_stages(stem, stages, width, prelu, se)
        last = scale_channels(512, width)
        trunk = nn.Sequential(
            conv_bn(in_channels, stem, 3, 2, act=prelu),
            conv_bn(stem, stem, 3, groups=stem, act=prelu),
            blocks,
            conv_bn(cout, last, 1, act=prelu),
        )
        pool = gdc_pool(last, gdc_size)
        super().__init__(trunk, last, num_classes=num_classes, embedding_dim=embedding_dim, dropout=dropout, pool=pool)
