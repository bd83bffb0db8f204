"""Reading IR/VIS images into the project's float convention, and writing 8-bit outputs atomically.

Intensity rule (the same for every image of a dataset, so that intensities stay comparable across images):
the stored integer value is divided by the largest value of its type, ``255`` for 8-bit and ``65535`` for
16-bit files (16-bit thermal PNG/TIFF). Images are never min-max stretched per image: a cold scene must stay
dark. Floating-point files are taken as already in ``[0, 1]`` and rejected otherwise.

Channels: IR stored as 3-channel grey (TNO, LLVIP, the Harvard MRI) becomes its grey value (BT.601, as
``cv2.COLOR_BGR2GRAY``, which for R = G = B is the stored value); a *colour* image in the IR (structural) role
is an error, not converted: it is almost always a swapped role (PET/SPECT given as the MRI) or a pseudo-colour
rendering, whose luminance is not the measured intensity. Grey VIS is replicated to 3 channels; OpenCV's
BGR(A) becomes RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from sgdfuse.atomic import atomic_write_bytes
from sgdfuse.data.base import DataError

#: File extensions recognised as images (lower case); OpenCV decodes all of them.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Largest channel spread (fraction of full scale) of a 3-channel image still read as grey: up to 2 of 255
#: levels (the rounding of a grey image saved as colour JPEG) pass; real colour differs by far more.
GREY_TOLERANCE = 2.5 / 255.0

_INTEGER_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _read_float(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` unchanged (bit depth and channels kept) and scale it to float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; check the dataset folder.")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt or not an image); replace or remove the file.")
    scale = _INTEGER_SCALE.get(image.dtype)
    if scale is not None:
        return image.astype(np.float32) / np.float32(scale)
    if image.dtype.kind == "f" and np.nanmin(image) >= 0.0 and np.nanmax(image) <= 1.0:
        return image.astype(np.float32)
    raise DataError(
        f"image {path} has unsupported pixel type {image.dtype} (range {image.min()}..{image.max()}); "
        "store it as 8-bit or 16-bit PNG/TIFF, or as float in [0, 1]."
    )


def _drop_alpha(image: np.ndarray) -> np.ndarray:
    return image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image


def read_ir(path: str | os.PathLike) -> np.ndarray:
    """Infrared / structural image -> H×W float32 in [0, 1] (8-bit / 255, 16-bit / 65535; 3-channel grey ->
    its grey value). A colour file raises :class:`DataError` (see the module docstring)."""
    image = _drop_alpha(_read_float(path))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        _require_grey(image, Path(path))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    # BT.601 weights sum to 1 up to float rounding: keep the result inside [0, 1].
    return np.clip(image, 0.0, 1.0)


def _require_grey(image: np.ndarray, path: Path) -> None:
    """Reject a 3-channel IR image whose channels differ by more than JPEG noise of a grey image."""
    spread = float(np.max(image.max(axis=2) - image.min(axis=2)))
    if spread > GREY_TOLERANCE:
        raise DataError(
            f"IR-role image {path} is colour (its channels differ by up to {spread * 255:.0f} of 255 "
            "levels), but the IR / structural role takes a grey image (thermal IR, MRI). If the two folders' "
            "roles are swapped, swap ir_dir and vis_dir (the colour image, e.g. PET/SPECT or visible, goes "
            "in vis_dir); if it is a pseudo-colour rendering, convert the files to grey intensity first."
        )


def read_vis(path: str | os.PathLike) -> np.ndarray:
    """Visible image -> H×W×3 float32 RGB in [0, 1] (grey replicated; OpenCV's BGR converted to RGB)."""
    image = _drop_alpha(_read_float(path))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (clipped, rounded), the 8-bit convention of published fusion tables."""
    return np.round(np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png_atomic(path: str | os.PathLike, image01: np.ndarray) -> Path:
    """Write an H×W grey or H×W×3 RGB image in [0, 1] as 8-bit PNG: temp file in the same folder, then
    ``os.replace``, so a reader never sees a half-written file. Parent folders are created."""
    path = Path(path)
    image = to_uint8(image01)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ValueError(f"write_png_atomic({path}): expected H×W or H×W×3, got shape {image.shape}")
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"OpenCV could not encode {path} as PNG")
    return atomic_write_bytes(path, encoded.tobytes())
    return path
