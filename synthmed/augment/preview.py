"""Picture grids of images in [-1, 1]: sample grids for training and previews for inspection."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from synthmed.augment.dataset import ImageSet  # noqa: E402
from synthmed.augment.intensity import to_uint8  # noqa: E402


def image_grid(images: np.ndarray, columns: int = 8, padding: int = 2) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one uint8 picture ``(rows*H, columns*W, C)``.

    Gaps between tiles are black; a missing last-row tile stays black.
    """
    n, channels, height, width = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        np.uint8,
    )
    tiles = to_uint8(images)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top:top + height, left:left + width] = np.moveaxis(tile, 0, -1)
    return grid


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> None:
    """Save :func:`image_grid` of ``images`` as a PNG."""
    grid = image_grid(images, columns)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def save_preview(imageset: ImageSet, path: Path, per_row: int = 8, seed: int = 0) -> None:
    """A preview PNG: one row of random images per class (one row when unlabelled)."""
    rng = np.random.default_rng(seed)
    if imageset.is_labelled:
        rows = [(name, np.flatnonzero(imageset.labels == k))
                for k, name in enumerate(imageset.class_names)]
    else:
        rows = [("images", np.arange(len(imageset)))]
    rows = [(name, rng.choice(idx, min(per_row, len(idx)), replace=False))
            for name, idx in rows if len(idx)]
    figure, axes = plt.subplots(len(rows), 1, figsize=(per_row * 1.1, 1.3 * len(rows) + 0.4),
                                squeeze=False)
    for axis, (name, chosen) in zip(axes[:, 0], rows, strict=True):
        grid = image_grid(imageset.images[chosen], columns=per_row)
        axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"{name} ({len(chosen)} shown)", fontsize=9, loc="left")
        axis.axis("off")
    height, width = imageset.size
    figure.suptitle(f"{imageset.metadata.get('origin', '')}  {len(imageset)} images, "
                    f"{imageset.channels}x{height}x{width}", fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
