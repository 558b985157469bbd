"""Pair models (kind "pair"): two images in, one "same pair" logit out. Seed 004's shoe models.

`pair_cnn` stacks the two images along the height (B, 3, 2H, W); `pair_cnn_channel` concatenates them
on channels (B, 6, H, W), which lets the first convolution compare the two at every pixel (the seed's
finding: it does better). Both: 4 x (conv -> ReLU -> 2x2 max-pool), channels n, 2n, 4n, 8n, then
FC(100) -> FC(1). One logit with BCE replaces the seed's 2-way log-softmax (same model, half the head).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.errors import require
from core.models.base import init_weights
from core.models.registry import register_model

GRID = 4  # the feature map is average-pooled to GRID x GRID per image, so any input size >= 32 px works


class PairConvNet(nn.Module):
    """Shared body; subclasses say how to combine the images (`combine`) and what that does to shapes."""

    combined_channels_factor = 1  # input channels of conv1 = in_channels * this
    grid: tuple[int, int] = (GRID, GRID)  # pooled (h, w) of the combined map

    def __init__(
        self, n: int = 8, kernel_size: int = 5, dropout: float = 0.0, in_channels: int = 3, hidden: int = 100
    ) -> None:
        require(n >= 1, f"model.n must be >= 1, got {n}")
        require(
            kernel_size >= 1 and kernel_size % 2 == 1,
            f"model.kernel_size must be odd (3 or 5 keeps even feature maps), got {kernel_size}",
        )
        require(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), got {dropout}")
        require(hidden >= 1, f"model.hidden must be >= 1, got {hidden}")
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels * self.combined_channels_factor
        for cout in (n, 2 * n, 4 * n, 8 * n):
            layers += [
                nn.Conv2d(cin, cout, kernel_size, padding=(kernel_size - 1) // 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(self.grid))
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(cin * self.grid[0] * self.grid[1], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        init_weights(self)

    @staticmethod
    def combine(xa: Tensor, xb: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        """xa, xb: (B, in_channels, H, W) -> (B,) logit that they are the same pair (sigmoid -> probability)."""
        return self.classifier(self.features(self.combine(xa, xb))).squeeze(1)


@register_model("pair_cnn", kind="pair")
class PairCNN(PairConvNet):
    """Seed 004's `CNN`: the two images one above the other, (B, C, 2H, W)."""

    grid = (2 * GRID, GRID)  # keeps the stacked map's 2:1 aspect, as the seed's flatten did

    @staticmethod
    def combine(xa: Tensor, xb: Tensor) -> Tensor:
        return torch.cat((xa, xb), dim=2)


@register_model("pair_cnn_channel", kind="pair")
class PairCNNChannel(PairConvNet):
    """Seed 004's `CNNChannel`: the two images concatenated on channels, (B, 2C, H, W)."""

    combined_channels_factor = 2

    @staticmethod
    def combine(xa: Tensor, xb: Tensor) -> Tensor:
        return torch.cat((xa, xb), dim=1)
