"""The contract every image model keeps, and the small layers the families share.

`EmbeddingNet(trunk, channels, ...)` adds the pooling, the BN'd linear "neck" that makes the embedding,
and the optional class head around a family's convolutional trunk, so `forward_features` / `embed` /
`forward` behave the same for every family and one parametrised test covers them all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import require

Activation = Callable[[int], nn.Module]  # channels -> activation module (PReLU needs the count)


def relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=True)


def relu6(channels: int) -> nn.Module:
    return nn.ReLU6(inplace=True)


def prelu(channels: int) -> nn.Module:
    return nn.PReLU(channels)


def conv_bn(
    cin: int,
    cout: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Activation | None = relu,
    padding: int | None = None,
) -> nn.Sequential:
    """Conv (no bias: the BN shift replaces it) -> BatchNorm -> optional activation.

    padding defaults to (kernel_size - 1) // 2 ('same' for odd kernels at stride 1).
    """
    padding = (kernel_size - 1) // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(cout))
    return nn.Sequential(*layers)


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """channels * width rounded to a multiple of `divisor` (tensor-core friendly), never down by >10%."""
    scaled = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    if scaled < 0.9 * channels * width:
        scaled += divisor
    return scaled


def check_common(num_classes: int, embedding_dim: int, dropout: float, width: float, in_channels: int) -> None:
    """Validate the options every image model takes."""
    require(num_classes >= 0, f"model.num_classes must be >= 0 (0 = no class head), got {num_classes}")
    require(embedding_dim >= 1, f"model.embedding_dim must be >= 1, got {embedding_dim}")
    require(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), got {dropout}")
    require(width > 0, f"model.width must be > 0, got {width}")
    require(in_channels >= 1, f"model.in_channels must be >= 1, got {in_channels}")


def gdc_pool(channels: int, size: int) -> nn.Sequential:
    """Global depthwise convolution (MobileFaceNet's GDC): (B, C, h, w) -> (B, C, 1, 1).

    Unlike global average pooling it learns one weight per channel and map position, so it keeps where in
    an aligned face a feature fired. The map is first resampled to size x size by adaptive average
    pooling, so any input >= 32 px works; the kernel is linear (no activation) and unpadded.
    """
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(size), conv_bn(channels, channels, size, groups=channels, act=None, padding=0)
    )


def init_weights(module: nn.Module) -> None:
    """He init for convolutions (ReLU-family nets), unit BN; Linear keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class EmbeddingNet(nn.Module):
    """trunk -> pool -> neck (dropout, linear, BN) = embedding -> optional linear class head.

    trunk: (B, C_in, H, W) -> (B, channels, h, w); pool: (B, channels, h, w) -> (B, channels, 1, 1),
    global average by default. The neck's BatchNorm1d is what the margin losses expect (ArcFace's
    "BN-Dropout-FC-BN" output layer); the head, when num_classes > 0, reads the un-normalised embedding.
    """

    def __init__(
        self,
        trunk: nn.Module,
        channels: int,
        *,
        num_classes: int,
        embedding_dim: int,
        dropout: float,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.trunk = trunk
        # Adaptive pooling makes every model accept any input size >= 32 px.
        self.pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
        self.neck = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(channels, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self.head = nn.Linear(embedding_dim, num_classes) if num_classes > 0 else None
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, D) un-normalised embedding."""
        return self.neck(self.pool(self.trunk(x)))

    def embed(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, D) float32, L2-normalised (fp32 so norms are 1 under bf16 autocast)."""
        return F.normalize(self.forward_features(x).float(), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, num_classes) logits when the model has a head, else the (B, D) normalised embedding."""
        features = self.forward_features(x)
        if self.head is None:
            return F.normalize(features.float(), dim=1)
        return self.head(features)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"
