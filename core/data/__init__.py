"""Data: image folders -> decoded uint8 cache -> splits -> GPU batches.

Entry point: `build_or_load_cache(root, res)` (decode once, reuse while no file changes); then
`split_by_image` / `split_by_identity`, `core.data.samplers` for index batches and
`core.data.augment.BatchAugment` on the device. Only the numpy/PIL modules are imported here:
decode worker processes import this package and should not pay for importing torch.
"""

from core.data.cache import ImageCache, build_or_load_cache, cache_location, cache_status, load_image_arrays
from core.data.images import IMAGE_EXTENSIONS, BadImageError, FolderScan, load_rgb, resize_square, scan_image_folder
from core.data.splits import load_split, save_split, split_by_identity, split_by_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "FolderScan",
    "ImageCache",
    "build_or_load_cache",
    "cache_location",
    "cache_status",
    "load_image_arrays",
    "load_rgb",
    "load_split",
    "resize_square",
    "save_split",
    "scan_image_folder",
    "split_by_identity",
    "split_by_image",
]
