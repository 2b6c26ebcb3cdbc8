"""The per-image metrics of the paired translation evaluation, MONAI's: MAE and PSNR of the
masked voxels, SSIM with an 11 px Gaussian window, and the padded bounding box of a mask that
SSIM is taken on."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MAEMetric, PSNRMetric, SSIMMetric

METRICS = {"mae": "MAE", "psnr": "PSNR (dB)", "ssim_slice": "SSIM slice", "ssim_bbox": "SSIM bbox"}
SSIM_WINDOW = 11


def mean_absolute_error(predicted: np.ndarray, truth: np.ndarray) -> float:
    """MONAI MAE of two equal-length 1-D arrays (one batch item of ``(1, 1, n)``)."""
    return float(MAEMetric(reduction="none")(_pixels(predicted), _pixels(truth)))


def peak_snr(predicted: np.ndarray, truth: np.ndarray, peak: float) -> float:
    """MONAI PSNR of two equal-length 1-D arrays; ``inf`` when they are identical."""
    return float(PSNRMetric(max_val=peak, reduction="none")(_pixels(predicted), _pixels(truth)))


def _pixels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, np.float64)).reshape(1, 1, -1)


def structural_similarity(predicted: np.ndarray, truth: np.ndarray, peak: float) -> np.ndarray:
    """MONAI SSIM of ``(S, h, w)`` images, one value per image ``(S,)``."""
    metric = SSIMMetric(spatial_dims=2, data_range=peak, win_size=SSIM_WINDOW, reduction="none")
    values = metric(torch.from_numpy(predicted[:, None].astype(np.float32)),
                    torch.from_numpy(truth[:, None].astype(np.float32)))
    return values.reshape(-1).numpy().astype(np.float64)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of a non-empty ``(H, W)`` mask, grown to at least ``SSIM_WINDOW``."""
    box = []
    for axis, length in enumerate(mask.shape):
        hits = np.flatnonzero(mask.any(axis=1 - axis))
        start, stop = int(hits[0]), int(hits[-1]) + 1
        start = max(0, min(start - max(0, SSIM_WINDOW - (stop - start)) // 2,
                           length - SSIM_WINDOW))
        box.append(slice(start, max(stop, start + SSIM_WINDOW)))
    return box[0], box[1]
