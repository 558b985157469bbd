"""Five-point face alignment: a least-squares similarity transform onto the ArcFace template, then a warp.

Entry points: `template(res)` (the 5 reference points for an (H, W) output), `umeyama(src, dst)` (the
rotation + uniform scale + shift that best maps src onto dst, Umeyama 1991), and `warp(image, matrix,
res)`. The ArcFace 112x112 template is the one InsightFace uses; its 112x96 variant (SphereFace/CosFace
crops) is the same points 8 px to the left. Other sizes scale the template by H/112 and centre it in W.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# (x, y) of left eye, right eye, nose tip, left and right mouth corner in a 112 x 112 crop (InsightFace).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template(res: int | tuple[int, int]) -> np.ndarray:
    """The 5 target points for an output of (H, W) pixels (an int means square): the ArcFace points scaled
    by H/112 and centred horizontally, which gives exactly the 112x96 variant (x - 8) for (112, 96)."""
    h, w = (res, res) if isinstance(res, (int, np.integer)) else res
    s = h / 112.0
    return ARCFACE_112 * s + np.array([(w - 112.0 * s) / 2.0, 0.0])


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform T (2x3: [sR | t]) minimising sum ||dst_i - (s R src_i + t)||^2.

    src, dst: (K, 2) with K >= 2 points. Umeyama's closed form: SVD of the cross-covariance, with the
    reflection case excluded so that R is a proper rotation (det +1).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / var_s) if var_s > 0 else 1.0
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, 2) points mapped by a 2x3 affine matrix."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, res: int | tuple[int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 crop that `matrix` (source pixel -> crop pixel) cuts out of `image`.

    Bicubic, out-of-image pixels black. When the crop shrinks the face by more than 2x, the source is
    first box-reduced by an integer factor so that bicubic sampling does not alias (a 14 MP photo).
    """
    h, w = (res, res) if isinstance(res, (int, np.integer)) else res
    m = np.vstack([matrix, [0.0, 0.0, 1.0]])
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    pil = Image.fromarray(np.ascontiguousarray(image))
    factor = int(0.5 / scale) if scale > 0 else 1
    if factor >= 2:
        pil = pil.reduce(factor)
        # reduced pixel j averages source pixels f j .. f j + f - 1, so its centre is source f j + (f - 1) / 2
        half = (factor - 1) / 2.0
        m = m @ np.array([[factor, 0.0, half], [0.0, factor, half], [0.0, 0.0, 1.0]])
    # Landmarks and template put pixel i's centre at i; PIL's transform puts it at i + 0.5 and wants the
    # map from output to input, so it gets C M^-1 C^-1 with C the half-pixel shift.
    centre = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(centre @ m @ np.linalg.inv(centre))
    out = pil.transform(
        (w, h), Image.Transform.AFFINE, tuple(inv[:2].reshape(-1)), Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)
    )
    return np.asarray(out, dtype=np.uint8)
