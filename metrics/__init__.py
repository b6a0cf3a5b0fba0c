"""Scoring generated videos: FVD, FID and detector mAP / mIoU (docs/metrics.md).

Entry points: `metrics.evaluate.evaluate(real_videos, gen_videos, cfg)` and
`python -m metrics.evaluate --real DIR --gen DIR --metrics fvd,fid,det --out metrics.json`.
Submodules are imported on demand (ultralytics and torchmetrics are heavy).
"""
