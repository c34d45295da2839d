"""Real models and real images for benchmarks.

Models: PaddleOCR's PP-OCRv4 text detector (DBNet, 4.7 MB) and the PP-OCR mobile
text-direction classifier, Apache-2.0, trained on real data and shipped inside the
``rapidocr-onnxruntime`` wheel on PyPI. ``make bench`` installs it without its
dependencies (only the model files are used):

    .venv/bin/pip install --no-deps rapidocr-onnxruntime==1.4.4

Images: scikit-learn's two sample photographs (china.jpg, flower.jpg), cut into
640x640 crops and normalised the way PaddleOCR does ((x/255 - 0.5) / 0.5), NCHW.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["det_model", "photo_frames"]


def _models_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "this benchmark needs the PP-OCR models from PyPI: "
            ".venv/bin/pip install --no-deps rapidocr-onnxruntime==1.4.4"
        )
    return Path(spec.origin).parent / "models"


def det_model() -> bytes:
    """PP-OCRv4 text detection: input ``x`` [N,3,H,W] float32, output [N,1,H,W]."""
    return (_models_dir() / "ch_PP-OCRv4_det_infer.onnx").read_bytes()


def photo_frames(n: int, *, size: int = 640, seed: int = 0) -> np.ndarray:
    """``n`` random size x size crops of the sample photos, [n,3,size,size] float32."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640x3 uint8 images
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w, _ = img.shape
        # Upscale by 2 (nearest) so a 640x640 crop fits, then crop at random.
        big = img.repeat(2, axis=0).repeat(2, axis=1)
        y = rng.integers(0, 2 * h - size + 1)
        x = rng.integers(0, 2 * w - size + 1)
        crop = big[y : y + size, x : x + size].astype(np.float32)
        out[i] = ((crop / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out
