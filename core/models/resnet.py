"""ResNets for small (64-112 px) images: `resnet10_small`, `resnet18_small`, `resnet34_small`.

Seed 000's recipe: a 3x3 stride-1 stem and one max-pool instead of ImageNet's 7x7/2 conv + pool, so a
64 px face keeps an 8x8 map at the last stage (stride 8); `extra_blocks` appends stride-1 basic blocks
at the last width (the seed used 2) for a more expressive embedding; `gdc_size` > 0 swaps global average
pooling for MobileFaceNet's global depthwise convolution, which keeps where in an aligned face a feature fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import cast

from torch import Tensor, nn

from core.errors import require
from core.models.base import EmbeddingNet, check_common, conv_bn, gdc_pool, scale_channels
from core.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut: (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetSmall(EmbeddingNet):
    """Basic-block ResNet with a small-image stem; stage i has 64 * 2**i * width channels.

    layers: blocks per stage; strides: first-block stride per stage (default total stride 8 with the
    max-pool: 64 px -> 8x8, 112 px -> 14x14); extra_blocks: stride-1 blocks added to the last stage;
    gdc_size: 0 pools the last map by global average, > 0 by a gdc_size x gdc_size global depthwise conv
    (`gdc_pool`; the last map's own size, e.g. 6 for 96 px at strides 2, 2, 2, 1).
    """

    def __init__(
        self,
        num_classes: int = 0,
        embedding_dim: int = 128,
        dropout: float = 0.0,
        width: float = 1.0,
        in_channels: int = 3,
        layers: Sequence[int] = (2, 2, 2, 2),
        strides: Sequence[int] = (1, 2, 2, 1),
        extra_blocks: int = 0,
        gdc_size: int = 0,
    ) -> None:
        check_common(num_classes, embedding_dim, dropout, width, in_channels)
        require(
            len(layers) == len(strides) and len(layers) > 0,
            f"model.layers {list(layers)} and model.strides {list(strides)} need the same, non-zero length",
        )
        require(all(n >= 1 for n in layers), f"model.layers must be >= 1 per stage, got {list(layers)}")
        require(all(s in (1, 2) for s in strides), f"model.strides must be 1 or 2, got {list(strides)}")
        require(extra_blocks >= 0, f"model.extra_blocks must be >= 0, got {extra_blocks}")
        require(gdc_size >= 0, f"model.gdc_size must be >= 0 (0 = global average pooling), got {gdc_size}")
        widths = [scale_channels(64 * 2**i, width) for i in range(len(layers))]
        blocks = list(layers[:-1]) + [layers[-1] + extra_blocks]
        stages: list[nn.Module] = []
        cin = widths[0]
        for cout, n, stride in zip(widths, blocks, strides):
            stages.append(
                nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)))
            )
            cin = cout
        trunk = nn.Sequential(
            conv_bn(in_channels, widths[0], 3),
            # The seed's one max-pool: a little shift invariance for the first downsampling.
            nn.MaxPool2d(3, 2, 1),
            *stages,
        )
        pool = gdc_pool(widths[-1], gdc_size) if gdc_size else None
        super().__init__(
            trunk, widths[-1], num_classes=num_classes, embedding_dim=embedding_dim, dropout=dropout, pool=pool
        )
        for m in self.modules():
            if isinstance(m, BasicBlock):
                # Zero-init the residual branch's last BN: each block starts as identity (Goyal et al.).
                last = cast(nn.Sequential, m.body[-1])  # body's last block is a conv_bn: (conv, BatchNorm2d)
                bn = cast(nn.BatchNorm2d, last[1])
                nn.init.zeros_(bn.weight)


register_model("resnet18_small")(ResNetSmall)
register_model("resnet10_small")(partial(ResNetSmall, layers=(1, 1, 1, 1)))
register_model("resnet34_small")(partial(ResNetSmall, layers=(3, 4, 6, 3)))
