"""The one place that opens, validates and converts images.

Sources accepted everywhere: a path (str / Path), a PIL image, a numpy array (H,W), (H,W,3) or (H,W,4),
uint8 or float in [0,1], or a torch tensor (3,H,W) / (1,H,W) in [0,1]. A *batch* is a list of those or
a float tensor (B,3,H,W) in [0,1].

Policies (documented because users rely on them):
- EXIF orientation is applied, so a phone photo is upright.
- Palette, greyscale, CMYK, 16-bit and float images become 8-bit RGB.
- Transparent images (RGBA, LA, palette with transparency) are composited over white; the alpha channel
  is kept as `ImageWithAlpha.alpha` so a product cut-out doubles as its own product mask.
- Images above `max_pixels` (default 64 MP) are refused before decoding (decompression bombs).
- Anything unreadable raises `ImageLoadError` whose message names the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hfpc_reward.errors import UsageError

DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = str | Path | Image.Image | np.ndarray | Any


class ImageLoadError(UsageError):
    """An input could not be turned into an image; the message names the input and the problem."""


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


def open_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageWithAlpha:
    """Open any accepted source as 8-bit RGB plus its alpha mask (if it had transparency)."""
    if isinstance(source, (str, Path)):
        image = _open_file(Path(source), max_pixels)
    elif isinstance(
        source, Image.Image
    ):  # an Image.open()ed phone photo is upright too, as its path would be
        image = ImageOps.exif_transpose(source) if source.getexif().get(0x0112, 1) != 1 else source
    elif isinstance(source, np.ndarray) or _is_tensor(source):
        image = _array_to_pil(source)
    else:
        raise ImageLoadError(
            f"cannot use {describe(source)} as an image: pass a path, PIL image, array or tensor"
        )
    _check_pixels(image, max_pixels, describe(source))
    return _normalise_mode(image)


def load_rgb(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open any accepted source as an 8-bit RGB PIL image (transparency composited over white)."""
    return open_image(source, max_pixels=max_pixels).rgb


def load_mask(source: ImageSource, size: tuple[int, int] | None = None) -> np.ndarray:
    """Open a product mask as a bool array (H,W). White / opaque = product.

    A mask file may be greyscale/RGB (threshold at half intensity) or RGBA (alpha). When `size`
    (width, height) is given and differs, the mask is resized with nearest-neighbour sampling.
    """
    if isinstance(source, np.ndarray) and source.ndim == 2:
        mask = source.astype(np.float32) > (0.5 if source.dtype != np.uint8 else 127)
    else:
        loaded = open_image(source)
        if loaded.alpha is not None and not loaded.alpha.all():
            mask = loaded.alpha
        else:
            mask = np.asarray(loaded.rgb.convert("L")) > 127
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))
    return mask.astype(bool)


def split_batch(batch: Sequence[ImageSource] | Any, masks: bool = False) -> list[Any]:
    """A batch as a list of single sources, not decoded: a list stays a list, a (B,3,H,W) tensor / array is
    split along B (with `masks`, also (B,H,W)). A single image is refused: public APIs take batches."""
    if isinstance(batch, (str, Path, Image.Image)):
        raise ImageLoadError("expected a batch (a list of images or a (B,3,H,W) tensor), got a single image")
    is_array = _is_tensor(batch) or isinstance(batch, np.ndarray)
    if is_array and batch.ndim != 4 and not (masks and batch.ndim == 3):
        expected = "(B,1,H,W) or (B,H,W)" if masks else "(B,3,H,W)"
        raise ImageLoadError(f"a tensor batch must be {expected}, got shape {tuple(batch.shape)}")
    return list(batch)


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


def content_key(source: Any) -> str:
    """A cache key: the same for the same path, or for in-memory images with the same pixels."""
    if isinstance(source, (str, Path)):
        return f"path:{Path(source)}"
    if isinstance(source, Image.Image):
        data, shape = source.tobytes(), (source.mode, source.size)
    else:
        array = source.detach().cpu().numpy() if _is_tensor(source) else np.asarray(source)
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


def _normalise_mode(image: Image.Image) -> ImageWithAlpha:
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
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


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _array_to_pil(array: Any) -> Image.Image:
    if _is_tensor(array):
        tensor = array.detach().float().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        array = tensor.numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"cannot interpret an array of shape {array.shape} as an image (H,W[,3|4])")
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        array = array.astype(np.float64) / (65535.0 if array.max() > 255 else 255.0)
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ImageLoadError(f"image array of shape {array.shape} contains NaN or infinite values")
        array = np.clip(array.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array)
