"""Object masks as uint8 label maps: DAVIS palette PNGs in and out, reading user masks, coloured overlays.

A label map is an (H, W) uint8 array: 0 is background, 1..254 are object ids, and 255 is DAVIS's "void"
(unlabelled border pixels), which is never an object. Ids need not be consecutive (a DAVIS annotation may hold
objects 1, 2 and 7) and are kept as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from llb.video.io import VideoError

BACKGROUND = 0
VOID = 255
MAX_OBJECTS = 254  # ids 1..254: 0 is background and 255 is void in DAVIS palette PNGs


class MaskError(VideoError):
    """A mask that cannot be used; the message names the problem and the fix."""


def _palette() -> np.ndarray:
    """The DAVIS/PASCAL VOC colour map: bit k of the index goes to bit 7 - k // 3 of channel k % 3."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * shift + channel)) & 1) << (7 - shift)).astype(np.uint8)
    return palette


_PALETTE = _palette()
_PALETTE.setflags(write=False)


def davis_palette() -> np.ndarray:
    """(256, 3) uint8 DAVIS palette colours: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ..."""
    return _PALETTE.copy()


def object_ids(labels: np.ndarray) -> list[int]:
    """Sorted object ids present in a label map (background 0 and void 255 excluded)."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256)
    return [int(i) for i in np.flatnonzero(counts) if i not in (BACKGROUND, VOID)]


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a label map: 2-D, integer or bool, values 0..255; returned as uint8."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype == np.uint8:
        return labels
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must hold integer ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label ids must lie in 0..255, got {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def save_palette_png(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """Write a label map as a mode-"P" PNG with the DAVIS palette, the format of DAVIS annotations."""
    image = Image.fromarray(_as_labels(labels), mode="P")
    image.putpalette(_PALETTE.ravel().tolist())
    image.save(path, format="PNG")


def _grey_labels(grey: np.ndarray) -> np.ndarray:
    """Grey mask -> labels: 0..127 only is an id map (numpy 0/1 or 0..K saves), otherwise threshold at 128."""
    if grey.max() < 128:
        return grey.astype(np.uint8)
    return (grey >= 128).astype(np.uint8)


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    """One uint32 per colour, 0xRRGGBB, so that colours can be compared and counted as scalars."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_labels(rgb: np.ndarray) -> np.ndarray:
    """Colour mask -> labels 1..K, one per distinct non-black colour.

    Colours of the DAVIS palette come first in palette order (so a rendered DAVIS annotation keeps its object
    order), other colours follow in order of first appearance; the void colour is background.
    """
    codes = _colour_codes(rgb)
    colours, first, inverse = np.unique(codes.ravel(), return_index=True, return_inverse=True)
    palette_codes = _colour_codes(_PALETTE)
    palette_index = {int(code): i for i, code in enumerate(palette_codes)}
    background = (0, int(palette_codes[VOID]))
    objects = [i for i, code in enumerate(colours) if int(code) not in background]
    objects.sort(key=lambda i: (palette_index.get(int(colours[i]), 256), first[i]))
    if len(objects) > MAX_OBJECTS:
        raise MaskError(
            f"the mask has {len(objects)} distinct colours but at most {MAX_OBJECTS} objects are possible; "
            "save it without anti-aliasing or as a palette PNG with one index per object"
        )
    lut = np.zeros(len(colours), dtype=np.uint8)
    lut[objects] = np.arange(1, len(objects) + 1, dtype=np.uint8)
    return lut[inverse].reshape(codes.shape)


def _decode(image: Image.Image) -> np.ndarray:
    """Label map of an opened mask image, by mode (see `load_mask`)."""
    mode = image.mode
    if mode in ("P", "PA"):
        indices = np.array(image.getchannel(0))
        if mode == "PA":
            indices[np.array(image.getchannel("A")) < 128] = BACKGROUND
        indices[indices == VOID] = BACKGROUND
        return indices
    if mode == "1":
        return np.array(image, dtype=np.uint8)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("L" if mode in ("I", "I;16", "I;16B", "I;16L", "F") else "RGB")
    array = np.array(image)
    if array.ndim == 2:
        return _grey_labels(array)
    colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
    if array.shape[2] in (2, 4):  # transparent pixels are background whatever colour they hold
        colour = np.where(array[..., -1:] >= 128, colour, 0).astype(np.uint8)
    if colour.shape[2] == 1 or (colour == colour[..., :1]).all():
        return _grey_labels(colour[..., 0])
    return _colour_labels(colour)


def load_mask(path: str | os.PathLike[str], *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a first-frame mask as an (H, W) uint8 label map of object ids.

    - palette PNG (DAVIS annotations): the indices, kept as they are; void 255 becomes 0 (ignored);
    - grey or binary image (mode 1/L, or RGB with equal channels): one object, pixels >= 128; an image whose
      values all lie below 128 (a 0/1 or 0..K array saved from numpy) is read as ids directly;
    - colour image: each distinct non-black colour is an object, ids 1..K (DAVIS colours first, in palette
      order, then the rest in order of appearance); in RGBA, pixels with alpha < 128 are background.

    `size` is the processed video's (width, height): a mask of another size with the same aspect ratio (made
    on the source video, or on any resized copy of it) is scaled to it (nearest neighbour, ids kept); a mask of
    another aspect ratio is an error, as is a mask with no object (also after scaling).
    """
    name = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
            labels = _decode(image)
    except FileNotFoundError as err:
        raise MaskError(f"no such mask file: {name}; upload the mask again") from err
    except (OSError, Image.DecompressionBombError) as err:
        raise MaskError(f"unreadable mask: {name} could not be read ({err}); upload a PNG mask") from err
    scale = size is not None and labels.shape[::-1] != tuple(size)
    if scale:
        _check_aspect(labels.shape, size)
    if not object_ids(labels):
        raise MaskError(f"empty mask: {name} marks no object pixel; draw or click the object first")
    if scale:
        labels = cv2.resize(labels, (int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST)
        if not object_ids(labels):
            raise MaskError(
                f"the mask's objects vanish when it is scaled to the video's {size[0]}x{size[1]}; "
                "draw them larger or click them in the app"
            )
    return labels


ASPECT_TOLERANCE = 0.01  # relative: 1920x1080 and 1920x1088 (a padded encode) count as the same shape


def _check_aspect(shape: tuple[int, int], size: tuple[int, int]) -> None:
    """MaskError unless a mask of `shape` (h, w) has the aspect ratio of the video's `size` (width, height)."""
    height, width = shape
    if abs(width * size[1] - height * size[0]) > ASPECT_TOLERANCE * width * size[1]:
        raise MaskError(
            f"mask is {width}x{height} (aspect {width / height:.2f}) but the video is {size[0]}x{size[1]} "
            f"(aspect {size[0] / size[1]:.2f}); export the mask from a frame of this video, at its own "
            "resolution or any size with the same aspect ratio"
        )


def overlay(frame: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """A new RGB frame with each object's palette colour blended over its pixels (weight `alpha`).

    With `contour`, each object gets a two-tone outline inside its border (about 1 px per 480 px of the shorter
    side each): white outermost, then its colour at full strength, so that an object stays visible where its
    colour matches the scene (DAVIS red on a red subject). Background and void pixels are left as they are.
    """
    frame = np.asarray(frame)
    labels = _as_labels(labels)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be an HxWx3 uint8 RGB array, got {frame.dtype} {frame.shape}")
    if frame.shape[:2] != labels.shape:
        raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, labels {labels.shape[1]}x{labels.shape[0]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    objects = (labels != BACKGROUND) & (labels != VOID)
    colours = cv2.LUT(cv2.merge([labels] * 3), _PALETTE[None])  # = _PALETTE[labels], ten times faster
    out = frame.copy()
    blended = cv2.addWeighted(frame, 1.0 - alpha, colours, alpha, 0.0)  # whole frame: faster than masked floats
    np.copyto(out, blended, where=objects[..., None])
    if contour:
        thickness = max(1, round(min(labels.shape) / 480))
        outer, band = (objects & _near_other_label(labels, t) for t in (thickness, 2 * thickness))
        np.copyto(out, colours, where=band[..., None])
        np.copyto(out, np.uint8(255), where=outer[..., None])
    return out


def _near_other_label(labels: np.ndarray, distance: int) -> np.ndarray:
    """(H, W) bool: pixels with a different label within `distance` pixels (a square neighbourhood)."""
    kernel = np.ones((2 * distance + 1, 2 * distance + 1), dtype=np.uint8)
    return (cv2.dilate(labels, kernel) != labels) | (cv2.erode(labels, kernel) != labels)


def labels_from_probs(probs: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """(K+1, H, W) scores of background then objects `ids` -> (H, W) uint8 label map by argmax."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(ids) + 1:
        raise ValueError(f"expected probs of shape ({len(ids) + 1}, H, W) for ids {list(ids)}, got {probs.shape}")
    if any(not 1 <= i <= MAX_OBJECTS for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"object ids must be distinct and lie in 1..{MAX_OBJECTS}, got {list(ids)}")
    lut = np.array([BACKGROUND, *ids], dtype=np.uint8)
    return lut[np.argmax(probs, axis=0)]
