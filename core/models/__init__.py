"""Model registry: `create_model(name, **kw)`, `list_models(kind)`, `model_kind(name)`, `register_model`.

Image models (kind "image") keep the `EmbeddingNet` contract: `forward_features(x) -> (B, D)`,
`embed(x) -> (B, D)` L2-normalised, `head` (Linear or None), `forward(x)` -> logits or embedding.
Pair models (kind "pair") map `forward(xa, xb) -> (B,)` same-pair logits. Importing this package
registers every family, so a config can name any model by string.
"""

from core.models import mobilenet, pair, resnet, tiny  # noqa: F401  (registers the families)
from core.models.base import EmbeddingNet
from core.models.registry import create_model, list_models, model_kind, register_model

__all__ = ["EmbeddingNet", "create_model", "list_models", "model_kind", "register_model"]
