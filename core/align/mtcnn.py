"""MTCNN face detector (Zhang et al. 2016): three small networks, batched, on CPU or CUDA.

Entry point: `MTCNN(device).detect(images) -> list[Faces]` (boxes, probabilities and 5 landmarks per
face, per image). The networks are written here and their weights are read from the pnet/rnet/onet.pt
state dicts shipped inside the facenet-pytorch wheel (MIT), with `torch.load(weights_only=True)`; the
package itself is never imported (its __init__ pulls in `requests` and a weight downloader), and
nothing downloads at run time. The cascade follows facenet-pytorch's detect_face, batched across images.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from core.errors import MatchLabError

# Published MTCNN settings (facenet-pytorch defaults): stage thresholds, pyramid factor, smallest face.
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
MIN_FACE = 20


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 windows -> face probability + box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refine net: 24x24 crops -> probability + box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # (N, C, H, W) -> (N, W, H, C) before flattening: the weights came from Caffe via TensorFlow.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: 48x48 crops -> probability + box regression + 5 landmarks (x1..x5, y1..y5 in 0..1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


@dataclass
class Faces:
    """The faces found in one image, in that image's pixel coordinates, most probable first.

    boxes: (F, 4) float32 x1, y1, x2, y2; probs: (F,) float32; landmarks: (F, 5, 2) float32 (x, y) of
    left eye, right eye, nose tip, left and right mouth corner (left/right as seen in the picture).
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def scaled(self, factor: float) -> Faces:
        """Coordinates multiplied by `factor` (detection ran on a resized copy)."""
        return Faces(self.boxes * factor, self.probs, self.landmarks * factor)


def _no_faces() -> Faces:
    return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


def weights_dir() -> Path:
    """The folder of pnet/rnet/onet.pt inside the installed facenet-pytorch wheel (found without importing it)."""
    hint = "install it as scripts/setup.sh does: pip install --no-deps facenet-pytorch==2.6.0"
    try:
        dist = metadata.distribution("facenet-pytorch")
    except metadata.PackageNotFoundError:
        raise MatchLabError(f"face alignment needs the MTCNN weights from facenet-pytorch; {hint}") from None
    folder = Path(str(dist.locate_file("facenet_pytorch/data")))
    if not all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
        raise MatchLabError(f"{folder}: the MTCNN weights pnet/rnet/onet.pt are missing; reinstall: {hint}")
    return folder


def _load(net: nn.Module, path: Path) -> nn.Module:
    # weights_only: the files are plain state dicts of tensors; nothing in them is unpickled as code.
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


def _pyramid(h: int, w: int, min_face: int, factor: float) -> list[float]:
    """Scales at which a `min_face`-pixel face becomes PNet's 12-pixel window, down to the whole image."""
    m = 12.0 / min_face
    side = min(h, w) * m
    scales: list[float] = []
    while side >= 12:
        scales.append(m * factor ** len(scales))
        side *= factor
    return scales


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares around the same centre (MTCNN's rerec)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = boxes[:, 0] + w * 0.5 - side * 0.5, boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply the networks' box regression (offsets as fractions of the box size)."""
    w = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
    h = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
    return boxes + reg * torch.cat([w, h, w, h], dim=1)


def _crops(images: torch.Tensor, image_idx: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """All candidate boxes cut out and resized to size x size in one call; outside the image reads as 0
    (MTCNN's zero padding). Boxes are 1-based inclusive pixel ranges, hence the -1 on the top-left."""
    b = boxes.trunc()
    rois = torch.cat([image_idx.to(b.dtype).unsqueeze(1), b[:, :1] - 1, b[:, 1:2] - 1, b[:, 2:3], b[:, 3:4]], dim=1)
    return roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS with overlap = intersection / smaller area (MTCNN's last stage), per group; few boxes remain here."""
    order = torch.argsort(scores, descending=True).tolist()
    b = boxes.cpu().numpy()
    g = groups.cpu().numpy()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            if g[i] != g[j]:
                continue
            iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1
            ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1
            if max(iw, 0) * max(ih, 0) / min(area[i], area[j]) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


class MTCNN:
    """The three-stage cascade; `detect` takes a list of RGB uint8 (H, W, 3) arrays of any sizes."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        min_face: int = MIN_FACE,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        factor: float = FACTOR,
    ) -> None:
        folder = weights_dir()
        self.device = torch.device(device)
        self.pnet = _load(PNet(), folder / "pnet.pt").to(self.device)
        self.rnet = _load(RNet(), folder / "rnet.pt").to(self.device)
        self.onet = _load(ONet(), folder / "onet.pt").to(self.device)
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[Faces]:
        """Faces of every image. Images of equal size run as one batch through every stage."""
        out: list[Faces | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise MatchLabError(f"detect: image {i} must be RGB uint8 (H, W, 3), got {im.dtype} {im.shape}")
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            batch = torch.from_numpy(np.stack([images[i] for i in idx])).to(self.device)
            for i, faces in zip(idx, self._detect_batch(batch)):
                out[i] = faces
        return out  # type: ignore[return-value]

    def _detect_batch(self, imgs_u8: torch.Tensor) -> list[Faces]:
        n, h, w = imgs_u8.shape[:3]
        imgs = (imgs_u8.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
        t1, t2, t3 = self.thresholds
        # Stage 1: PNet over the pyramid; per scale NMS 0.5, then per image NMS 0.7.
        found, found_img = [], []
        for scale in _pyramid(h, w, self.min_face, self.factor):
            small = F.interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, prob = self.pnet(small)
            mask = prob[:, 1] >= t1
            if not mask.any():
                continue
            where = mask.nonzero()  # (K, 3): image, row, col
            score = prob[:, 1][mask]
            r = reg.permute(0, 2, 3, 1)[mask]
            yx = where[:, 1:].to(imgs.dtype).flip(1)  # (col, row) = (x, y) of the 12x12 cell, stride 2
            q1, q2 = ((2 * yx + 1) / scale).floor(), ((2 * yx + 12) / scale).floor()
            boxes = torch.cat([q1, q2], dim=1)
            keep = batched_nms(boxes, score, where[:, 0], 0.5)
            found.append(torch.cat([boxes[keep], score[keep, None], r[keep]], dim=1))
            found_img.append(where[keep, 0])
        if not found:
            return [_no_faces() for _ in range(n)]
        cand, img_idx = torch.cat(found), torch.cat(found_img)
        keep = batched_nms(cand[:, :4], cand[:, 4], img_idx, 0.7)
        cand, img_idx = cand[keep], img_idx[keep]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9]))
        # Stage 2: RNet on 24x24 crops.
        reg, prob = self.rnet(_crops(imgs, img_idx, boxes, 24))
        ok = prob[:, 1] > t2
        boxes, score, reg, img_idx = boxes[ok], prob[ok, 1], reg[ok], img_idx[ok]
        if len(boxes):
            keep = batched_nms(boxes, score, img_idx, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep]))
            img_idx = img_idx[keep]
        # Stage 3: ONet on 48x48 crops -> final boxes, probabilities and landmarks.
        if not len(boxes):
            return [_no_faces() for _ in range(n)]
        reg, marks, prob = self.onet(_crops(imgs, img_idx, boxes, 48))
        ok = prob[:, 1] > t3
        boxes, score, reg, marks, img_idx = boxes[ok].trunc(), prob[ok, 1], reg[ok], marks[ok], img_idx[ok]
        bw = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        bh = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        px = bw * marks[:, :5] + boxes[:, :1] - 1
        py = bh * marks[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)
        boxes = _regress(boxes, reg)
        keep = _nms_min(boxes, score, img_idx, 0.7)
        boxes, score, points, img_idx = boxes[keep], score[keep], points[keep], img_idx[keep]
        b, s, p, g = (t.float().cpu().numpy() for t in (boxes, score, points, img_idx))
        result = []
        for i in range(n):
            sel = g == i
            order = np.argsort(-s[sel], kind="stable")
            result.append(
                Faces(
                    b[sel][order].astype(np.float32), s[sel][order].astype(np.float32), p[sel][order].astype(np.float32)
                )
            )
        return result


def detection_scale(h: int, w: int, max_side: int) -> float:
    """Factor (<= 1) that brings the longer side of an h x w image down to `max_side` for detection."""
    return min(1.0, max_side / max(h, w, 1)) if max_side > 0 else 1.0
