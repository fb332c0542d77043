"""The one place that opens, validates and converts images.

Sources accepted everywhere: a path (str / Path), a PIL image, a numpy array (H,W), (H,W,3) or (H,W,4),
uint8 or float, or a torch tensor (3,H,W) / (1,H,W). A *batch* is a list of those or a tensor (B,3,H,W).

Value ranges: integer pixels are 0..255 (16-bit: 0..65535). Float pixels are in the declared
`value_range`: "0,1" (the default), "-1,1" (a VAE decode) or "0,255" (only when declared). Values outside
the declared range are refused with a message naming the likely range, never clipped silently.

Policies (documented because users rely on them):
- EXIF orientation is applied, so a phone photo is upright.
- Palette, greyscale, CMYK, 16-bit and float images become 8-bit RGB.
- Transparent images (RGBA, LA, palette with transparency, greyscale or RGB with a PNG tRNS colour key)
  are composited over white; the alpha channel is kept as `ImageWithAlpha.alpha` so a product cut-out
  doubles as its own product mask.
- Images above `max_pixels` (default 64 MP) are refused before decoding (decompression bombs).
- Anything unreadable raises `ImageLoadError` whose message names the file and what was wrong.
- A product mask is white where the PRODUCT is (the opposite of diffusers' `mask_image`, white = repaint);
  `refuse_inverted_mask` refuses one that looks like a repaint mask.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

MASK_ASPECT_TOLERANCE = 0.02  # |log aspect ratio| a mask may differ from its image's and still be resized
DEFAULT_MAX_PIXELS = 64_000_000

# declared value range of float pixels -> (low, high)
VALUE_RANGES: dict[str, tuple[float, float]] = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}
# float pixels may stray this fraction of their range outside it (resampling overshoot) and are then clamped
RANGE_TOLERANCE = 1e-3
# a product mask covering more than this share of the image, over a plain backdrop, looks inverted
INVERTED_MASK_COVERAGE = 0.5

ImageSource = str | Path | Image.Image | np.ndarray | Any


class ImageLoadError(UsageError):
    """An input could not be turned into an image; the message names the input and the problem."""


class InvertedMaskError(UsageError):
    """A product mask looks like an inpainting mask (white = repaint) instead of white = product."""


@dataclass
class ImageWithAlpha:
    """An RGB image and, when the source was transparent, its alpha as a bool mask (True = opaque)."""

    rgb: Image.Image
    alpha: np.ndarray | None = None


def describe(source: Any) -> str:
    """A short human name for an image source, used in error messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"PIL image {source.mode} {source.size[0]}x{source.size[1]}"
    shape = getattr(source, "shape", None)
    return f"{type(source).__name__} of shape {tuple(shape)}" if shape is not None else type(source).__name__


def open_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, value_range: str = "0,1"
) -> ImageWithAlpha:
    """Open any accepted source as 8-bit RGB plus its alpha mask (if it had transparency).

    `value_range` declares the range of float array / tensor pixels (see the module docstring)."""
    if isinstance(source, (str, Path)):
        image = _open_file(Path(source), max_pixels)
    elif isinstance(
        source, Image.Image
    ):  # an Image.open()ed phone photo is upright too, as its path would be
        image = ImageOps.exif_transpose(source) if source.getexif().get(0x0112, 1) != 1 else source
    elif isinstance(source, np.ndarray) or is_tensor(source):
        image = _array_to_pil(source, value_range)
    else:
        raise ImageLoadError(
            f"cannot use {describe(source)} as an image: pass a path, PIL image, array or tensor"
        )
    _check_pixels(image, max_pixels, describe(source))
    return _normalise_mode(image)


def load_rgb(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, value_range: str = "0,1"
) -> Image.Image:
    """Open any accepted source as an 8-bit RGB PIL image (transparency composited over white)."""
    return open_image(source, max_pixels=max_pixels, value_range=value_range).rgb


def to_unit_range(pixels: Any, value_range: str = "0,1", name: str = "pixels") -> Any:
    """Float pixels (tensor or array) in the declared `value_range` as the same type in [0,1], on the same
    device (a CUDA tensor stays on its GPU). Values outside the declared range raise ImageLoadError naming
    the range they look like; integer arrays/tensors are 0..255 whatever is declared."""
    if value_range not in VALUE_RANGES:
        raise ImageLoadError(f"value_range must be one of {sorted(VALUE_RANGES)}, got {value_range!r}")
    tensor = is_tensor(pixels)
    if not is_floating(pixels if tensor else np.asarray(pixels)):
        return (pixels.float() if tensor else np.asarray(pixels, dtype=np.float32)) / 255.0
    if not all_finite(pixels):
        raise ImageLoadError(f"{name} of shape {tuple(pixels.shape)} contain NaN or infinite values")
    low, high = VALUE_RANGES[value_range]
    seen_low, seen_high = float(pixels.min()), float(pixels.max())
    slack = RANGE_TOLERANCE * (high - low)
    if seen_low < low - slack or seen_high > high + slack:
        raise ImageLoadError(
            f"{name} span [{seen_low:.3g}, {seen_high:.3g}], outside the declared value_range {value_range!r}"
            f"{_range_hint(seen_low, seen_high)}"
        )
    unit = (pixels - low) / (high - low)
    return unit.clamp(0.0, 1.0) if tensor else np.clip(unit, 0.0, 1.0)


def all_finite(pixels: Any) -> bool:
    """Whether float pixels (tensor or array) hold no NaN or infinity."""
    return bool(pixels.isfinite().all()) if is_tensor(pixels) else bool(np.isfinite(pixels).all())


def _range_hint(seen_low: float, seen_high: float) -> str:
    if seen_low < 0 and seen_low >= -1.0 - RANGE_TOLERANCE * 2 and seen_high <= 1.0 + RANGE_TOLERANCE * 2:
        return "; they look like a VAE decode: pass value_range='-1,1' (or rescale with (x + 1) / 2)"
    if seen_low >= 0 and seen_high <= 255.0 * (1 + RANGE_TOLERANCE):
        return "; they look like 8-bit values: pass value_range='0,255' (or divide by 255)"
    return "; rescale them into [0,1] first"


def load_mask(source: ImageSource, size: tuple[int, int] | None = None) -> np.ndarray:
    """Open a product mask as a bool array (H,W). White / opaque = product.

    A mask file may be greyscale/RGB (threshold at half intensity) or RGBA (alpha). When `size`
    (width, height) is given and differs, a mask of the same aspect ratio (within MASK_ASPECT_TOLERANCE)
    is resized with nearest-neighbour sampling and a logged warning; one of another aspect ratio belongs
    to another image and is refused (ImageLoadError).
    """
    values = _mask_values(source)
    if values is not None:
        mask = _binary(values)
    else:
        loaded = open_image(source)
        if loaded.alpha is not None and not loaded.alpha.all():
            mask = loaded.alpha
        else:
            mask = np.asarray(loaded.rgb.convert("L")) > 127
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        (height, width), (target_w, target_h) = mask.shape, size
        if abs(math.log((width / height) / (target_w / target_h))) > MASK_ASPECT_TOLERANCE:
            raise ImageLoadError(
                f"the mask is {width}x{height} but its image is {target_w}x{target_h} (another aspect ratio): "
                "give the product mask of this image"
            )
        logger.warning("resizing a %dx%d mask to its %dx%d image", width, height, target_w, target_h)
        mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))
    return mask.astype(bool)


def _mask_values(source: Any) -> np.ndarray | None:
    """An array or tensor mask as a numpy (H,W) array ((H,W,1) and (1,H,W) squeezed); None for a file, an
    image or a multi-channel array (decoded as an image)."""
    if not (is_tensor(source) or isinstance(source, np.ndarray)):
        return None
    values = _tensor_to_numpy(source) if is_tensor(source) else np.asarray(source)
    if not _one_mask(values.shape):
        return None
    if values.ndim == 2:
        return values
    return values.reshape(values.shape[:2] if values.shape[-1] == 1 else values.shape[1:])


def _one_mask(shape: Sequence[int]) -> bool:
    """Whether an array of `shape` is one mask, not a batch: (H,W), (H,W,1) or (1,H,W)."""
    return len(shape) == 2 or (len(shape) == 3 and 1 in (shape[0], shape[-1]))


def _binary(values: np.ndarray) -> np.ndarray:
    """Product pixels of a mask array: floats above 0.5; integers 0/1 as they are, 0..255 above 127, 16-bit
    above 32767 (a 0/1 uint8 mask, the usual segmenter output, was read as empty)."""
    if values.dtype == bool:
        return values
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32) > 0.5
    top = int(values.max()) if values.size else 0
    return values > (0 if top <= 1 else 127 if top <= 255 else 32767)


def split_batch(batch: Sequence[ImageSource] | Any, masks: bool = False) -> list[Any]:
    """A batch as a list of single sources, not decoded: a list stays a list, a (B,3,H,W) tensor / array is
    split along B (with `masks`, also (B,H,W)). A single image is refused: public APIs take batches."""
    if isinstance(batch, (str, Path, Image.Image)):
        raise ImageLoadError("expected a batch (a list of images or a (B,3,H,W) tensor), got a single image")
    is_array = is_tensor(batch) or isinstance(batch, np.ndarray)
    if is_array and batch.ndim != 4 and not (masks and batch.ndim == 3):
        expected = "(B,1,H,W) or (B,H,W)" if masks else "(B,3,H,W)"
        raise ImageLoadError(f"a tensor batch must be {expected}, got shape {tuple(batch.shape)}")
    return list(batch)


def as_batch(source_or_batch: ImageSource | Sequence[ImageSource] | Any, masks: bool = False) -> list[Any]:
    """Like `split_batch`, but a single image (path, PIL image, (3,H,W) / (H,W,3) tensor or array; with
    `masks`, an (H,W) array) becomes a batch of one: for one-pair conveniences that still return lists."""
    if isinstance(source_or_batch, (str, Path, Image.Image)):
        return [source_or_batch]
    if is_tensor(source_or_batch) or isinstance(source_or_batch, np.ndarray):
        shape = tuple(source_or_batch.shape)
        channels = shape[0] if is_tensor(source_or_batch) else shape[-1]
        single = _one_mask(shape) if masks else len(shape) == 3 and channels in (1, 3, 4)
        if single:
            return [source_or_batch]
    return split_batch(source_or_batch, masks=masks)


def load_batch(batch: Sequence[ImageSource] | Any) -> list[Image.Image]:
    """A batch (list of sources or a (B,3,H,W) tensor/array) as a list of RGB PIL images."""
    return [load_rgb(item) for item in split_batch(batch)]


def pil_to_tensor(images: Sequence[Image.Image]):
    """A list of same-size RGB PIL images as a float tensor (B,3,H,W) in [0,1]."""
    import torch

    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(tensor) -> list[Image.Image]:
    """A float tensor (B,3,H,W) in [0,1] as a list of RGB PIL images."""
    return [_array_to_pil(item) for item in tensor]


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an RGB image to `size` (width, height) with a high-quality filter (no-op if equal)."""
    return image if image.size == tuple(size) else image.resize(tuple(size), Image.BICUBIC)


def paste_product(generated: Image.Image, original: Image.Image, mask: np.ndarray) -> Image.Image:
    """The generated image with the original's product pixels (mask True) pasted back, at the original's size.

    Inpainting UNets with 9 input channels re-synthesise the whole image, product included; pasting the
    product back is how a generator guarantees the product is unchanged.
    """
    generated = resize_to(generated.convert("RGB"), original.size)
    if mask.shape != (original.size[1], original.size[0]):
        raise ValueError(f"mask of shape {mask.shape} does not match the original's size {original.size}")
    return Image.composite(original.convert("RGB"), generated, Image.fromarray(mask.astype(np.uint8) * 255))


def refuse_inverted_mask(product_mask: np.ndarray, original: Image.Image, name: str = "") -> None:
    """Raise InvertedMaskError when `product_mask` (bool (H,W), True = product) looks like an inpainting
    mask: it covers most of the image while the original shows a plain backdrop (its border colour) there."""
    coverage = float(product_mask.mean())
    rgb = np.asarray(original.convert("RGB"), dtype=np.float32)
    if coverage <= INVERTED_MASK_COVERAGE or rgb.shape[:2] != product_mask.shape:
        return
    ring = max(1, min(rgb.shape[:2]) // 25)
    border = np.concatenate(
        [rgb[:ring], rgb[-ring:], rgb[:, :ring].swapaxes(0, 1), rgb[:, -ring:].swapaxes(0, 1)], axis=0
    )
    backdrop = np.median(border.reshape(-1, 3), axis=0)
    near_backdrop = np.linalg.norm(rgb[product_mask] - backdrop, axis=1) < 24.0
    if near_backdrop.mean() > 0.6:
        raise InvertedMaskError(
            f"{name + ': ' if name else ''}product_mask covers {coverage:.0%} of the image and the original "
            "shows a plain backdrop there: it looks inverted (diffusers' mask_image is white where it "
            f"repaints); {_MASK_FIX}"
        )


def refuse_repaint_mask(product_mask: np.ndarray, repaint_mask: np.ndarray, name: str = "") -> None:
    """Raise InvertedMaskError when a product mask equals the pipeline's repaint mask (bool (H,W) each)."""
    if repaint_mask.shape == product_mask.shape and (repaint_mask == product_mask).mean() > 0.99:
        raise InvertedMaskError(
            f"{name + ': ' if name else ''}product_mask equals the pipeline's repaint mask_image; {_MASK_FIX}"
        )


_MASK_FIX = "pass product_mask white where the PRODUCT is (e.g. 1 - mask_image)"


def content_key(source: Any) -> str:
    """A cache key: the same for the same path, or for in-memory images with the same pixels."""
    if isinstance(source, (str, Path)):
        return f"path:{Path(source)}"
    if isinstance(source, Image.Image):
        data, shape = source.tobytes(), (source.mode, source.size)
    else:
        array = _tensor_to_numpy(source) if is_tensor(source) else np.asarray(source)
        data, shape = np.ascontiguousarray(array).tobytes(), (array.dtype.str, array.shape)
    return f"pixels:{shape}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def _open_file(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageLoadError(f"{path}: file does not exist")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise ImageLoadError(f"{path}: file is empty (0 bytes)")
    try:
        with _bomb_guard(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _check_pixels refuses it next
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_pixels, str(path))
            image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"{path}: image is too large to decode safely (decompression bomb: {exc}); downscale it or raise max_pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from None
    return ImageOps.exif_transpose(image)


class _bomb_guard:
    """Raise PIL's own bomb limit to ours for the duration of one open (PIL's default warns at 89 MP)."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __enter__(self):
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = self.max_pixels

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self.saved


def _check_pixels(image: Image.Image, max_pixels: int, name: str) -> None:
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(f"{name}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {width * height / 1e6:.0f} MP, above the limit of "
            f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard); downscale it or raise max_pixels"
        )


# modes whose transparency lives in info["transparency"] (a palette's, or a PNG tRNS colour key: an int for
# 1 / L, an (r, g, b) tuple for RGB) rather than in an alpha channel
_KEYED_TRANSPARENCY_MODES = ("P", "1", "L", "RGB")


def _normalise_mode(image: Image.Image) -> ImageWithAlpha:
    if image.mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info:
        # PIL turns the palette's or the tRNS colour key's transparency into an alpha channel
        image = image.convert("RGBA")
    elif image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        # I;16 is 16-bit by definition (a dark 16-bit photo must stay dark); plain I may hold 8-bit values
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return ImageWithAlpha(Image.alpha_composite(white, rgba).convert("RGB"), alpha > 127)
    return ImageWithAlpha(image.convert("RGB") if image.mode != "RGB" else image)


def is_tensor(obj: Any) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def is_floating(obj: Any) -> bool:
    """True for a float tensor or numpy array (pixels whose range `to_unit_range` needs declared)."""
    if is_tensor(obj):
        return obj.is_floating_point()
    return isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating)


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # bf16 has no numpy dtype


def _array_to_pil(array: Any, value_range: str = "0,1") -> Image.Image:
    if is_tensor(array):
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)
        array = _tensor_to_numpy(array)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"cannot interpret an array of shape {array.shape} as an image (H,W[,3|4])")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        # 16-bit by its type (a dark 16-bit photo stays dark, as its PNG does); wider integers by their values
        sixteen = array.dtype == np.uint16 or array.max() > 255
        array = array.astype(np.float64) / (65535.0 if sixteen else 255.0)
        value_range = "0,1"
    if array.dtype != np.uint8:
        unit = to_unit_range(
            array.astype(np.float32), value_range, name=f"image array of shape {array.shape}"
        )
        array = (unit * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)
