"""`convnet_tiny`: four conv-BN-ReLU-maxpool blocks, for tests and CPU demos.

Small enough to train in seconds on a CPU, yet it keeps the full image-model contract (neck, head,
embed), so end-to-end tests of training and evaluation exercise the same code paths as real runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from core.errors import require
from core.models.base import EmbeddingNet, check_common, conv_bn, scale_channels
from core.models.registry import register_model


@register_model("convnet_tiny")
class ConvNetTiny(EmbeddingNet):
    """channels: output channels of each block (times width); each block halves the resolution."""

    def __init__(
        self,
        num_classes: int = 0,
        embedding_dim: int = 128,
        dropout: float = 0.0,
        width: float = 1.0,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
    ) -> None:
        check_common(num_classes, embedding_dim, dropout, width, in_channels)
        require(0 < len(channels) <= 5, f"model.channels needs 1 to 5 blocks (inputs >= 32 px), got {list(channels)}")
        widths = [scale_channels(c, width) for c in channels]
        blocks: list[nn.Module] = []
        cin = in_channels
        for cout in widths:
            blocks += [conv_bn(cin, cout, 3), nn.MaxPool2d(2)]
            cin = cout
        super().__init__(
            nn.Sequential(*blocks), cin, num_classes=num_classes, embedding_dim=embedding_dim, dropout=dropout
        )
