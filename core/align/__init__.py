"""Face detection (MTCNN) and 5-point alignment onto the ArcFace template.

Entry points: `Aligner(res).align(files)` (core.align.faces) for photos, `MTCNN().detect(images)`
(core.align.mtcnn) for boxes, probabilities and landmarks, and `umeyama` / `template` / `warp`
(core.align.transform) for the geometry. Used by the decode-once cache (`align="mtcnn"`), the
`align` command and the live match page, so every consumer sees the same crops.
"""

# Here, not in faces.py: every cache load checks them, and faces.py imports torch.
ALIGN_METHODS = ("none", "mtcnn")
ON_NO_FACE = ("skip", "centre", "fail")
