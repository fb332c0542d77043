"""images.py: every accepted source becomes 8-bit RGB, transparency becomes a mask, bad files name themselves."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hfpc_reward.images import (
    ImageLoadError,
    as_batch,
    load_batch,
    load_mask,
    load_rgb,
    open_image,
    paste_product,
    pil_to_tensor,
    resize_to,
    tensor_to_pil,
)


def _gradient(width=40, height=30) -> np.ndarray:
    """A uint8 RGB image whose pixels say where they are (red = x, green = y)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.dstack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 77)]).astype(
        np.uint8
    )


def test_path_str_pil_numpy_and_tensor_sources_agree(tmp_path):
    pixels = _gradient()
    path = tmp_path / "g.png"
    Image.fromarray(pixels).save(path)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    for source in (path, str(path), Image.fromarray(pixels), pixels, pixels.astype(np.float32) / 255, tensor):
        image = load_rgb(source)
        assert image.mode == "RGB" and image.size == (40, 30)
        assert np.abs(np.asarray(image, dtype=int) - pixels).max() <= 1, type(source)


def test_single_channel_sources_become_grey_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for source in (grey, grey[..., None], torch.from_numpy(grey)[None].float() / 255, Image.fromarray(grey)):
        rgb = np.asarray(load_rgb(source))
        assert rgb.shape == (3, 4, 3)
        assert np.abs(rgb[..., 1].astype(int) - grey).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = np.asarray(load_rgb(path))
    assert image.shape == (40, 20, 3)  # upright: portrait
    assert image[5, 10, 0] > 200 and image[35, 10, 2] > 200  # red on top after the clockwise turn
    with Image.open(path) as opened:  # the same photo handed over as a PIL image is upright too
        assert (np.asarray(load_rgb(opened)) == image).all()


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "I;16", "I", "F", "1"])
def test_modes_become_8bit_rgb(tmp_path, mode):
    base = Image.fromarray(_gradient())
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255)
    elif mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        image = base.convert(mode)
    rgb = load_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if mode in ("L", "I;16", "F"):  # same brightness as the 8-bit grey version
        expected = np.asarray(base.convert("L"), dtype=int)
        assert np.abs(np.asarray(rgb)[..., 0].astype(int) - expected).max() <= 1
    if mode in ("P", "CMYK"):
        assert np.abs(np.asarray(rgb, dtype=int) - _gradient()).mean() < 12


def test_16bit_png_file_scales_to_8bit(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(load_rgb(path))[0, :, 0].tolist() == [0, 128, 255]


def test_dark_16bit_png_stays_dark(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint16)).save(path)  # all values <= 255
    assert np.asarray(load_rgb(path))[0, :, 0].tolist() == [0, 0, 1]
    # the same pixels as a uint16 array: 16-bit by their type too (they were brightened 256 times)
    assert np.asarray(load_rgb(np.array([[0, 128, 255]], dtype=np.uint16)))[0, :, 0].tolist() == [0, 0, 1]


def test_cmyk_jpeg_file_opens(tmp_path):
    path = tmp_path / "print.jpg"
    Image.fromarray(_gradient()).convert("CMYK").save(path)
    assert load_rgb(path).mode == "RGB"


def test_rgba_is_composited_over_white_and_alpha_is_the_mask(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:6, 3:8] = (200, 10, 10, 255)
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    loaded = open_image(path)
    pixels = np.asarray(loaded.rgb)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[3, 4].tolist() == [200, 10, 10]
    assert loaded.alpha.dtype == bool and loaded.alpha.sum() == 20 and loaded.alpha[3, 4]
    assert (load_mask(path) == loaded.alpha).all()
    assert open_image(Image.fromarray(rgba[..., :3])).alpha is None


def test_palette_with_transparency_gives_a_mask():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    loaded = open_image(image)
    assert loaded.alpha.sum() == 1 and loaded.alpha[1, 1]
    assert np.asarray(loaded.rgb)[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("mode", "background", "product", "key"),
    [("L", 0, 180, 0), ("RGB", (0, 0, 0), (200, 10, 10), (0, 0, 0))],
    ids=["greyscale", "rgb"],
)
def test_png_transparency_key_gives_a_mask_like_a_palette(tmp_path, mode, background, product, key):
    # a greyscale / RGB PNG with a tRNS colour key is transparent where its pixels equal the key
    image = Image.new(mode, (4, 4), background)
    image.putpixel((1, 1), product)
    path = tmp_path / f"{mode}_trns.png"
    image.save(path, transparency=key)
    assert Image.open(path).info["transparency"] == key
    loaded = open_image(path)
    assert loaded.alpha is not None and loaded.alpha.sum() == 1 and loaded.alpha[1, 1]
    # the keyed backdrop is composited over white, the product keeps its colour
    assert np.asarray(loaded.rgb)[0, 0].tolist() == [255, 255, 255]
    expected = list(product) if mode == "RGB" else [product] * 3
    assert np.asarray(loaded.rgb)[1, 1].tolist() == expected
    assert (load_mask(path) == loaded.alpha).all()
    image.save(tmp_path / "opaque.png")  # the same pixels without the key stay opaque
    assert open_image(tmp_path / "opaque.png").alpha is None


def test_load_mask_thresholds_and_resizes_nearest(tmp_path):
    grey = np.zeros((4, 6), np.uint8)
    grey[:, 3:] = 200
    path = tmp_path / "m.png"
    Image.fromarray(grey).save(path)
    mask = load_mask(path)
    assert mask.dtype == bool and mask[:, 3:].all() and not mask[:, :3].any()
    big = load_mask(path, size=(12, 8))
    assert big.shape == (8, 12) and big[:, 6:].all() and not big[:, :6].any()
    assert load_mask(np.array([[0.2, 0.7]])).tolist() == [[False, True]]


def test_batches_and_tensor_round_trip():
    pixels = _gradient(8, 6)
    batch = load_batch([pixels, Image.fromarray(pixels)])
    tensor = pil_to_tensor(batch)
    assert (
        tensor.shape == (2, 3, 6, 8)
        and tensor.dtype == torch.float32
        and 0 <= tensor.min() <= tensor.max() <= 1
    )
    back = tensor_to_pil(tensor)
    assert all((np.asarray(image) == pixels).all() for image in back)
    assert len(load_batch(tensor)) == 2
    with pytest.raises(ImageLoadError, match="expected a batch"):
        load_batch(Image.fromarray(pixels))
    with pytest.raises(ImageLoadError, match=r"\(B,3,H,W\)"):
        load_batch(tensor[0])


def test_resize_and_paste_product():
    image = Image.fromarray(_gradient())
    assert resize_to(image, (40, 30)) is image
    assert resize_to(image, (20, 10)).size == (20, 10)
    original = Image.new("RGB", (40, 30), (255, 0, 0))
    mask = np.zeros((30, 40), bool)
    mask[10:20, 10:20] = True
    pasted = np.asarray(paste_product(image.resize((80, 60)), original, mask))
    assert pasted.shape == (30, 40, 3)
    assert pasted[15, 15].tolist() == [255, 0, 0] and pasted[0, 0].tolist() != [255, 0, 0]
    with pytest.raises(ValueError, match="does not match"):
        paste_product(image, original, mask[:10])


def test_bad_arrays_and_objects_are_refused():
    with pytest.raises(ImageLoadError, match="NaN"):
        load_rgb(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageLoadError, match=r"shape \(4, 4, 5\)"):
        load_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageLoadError, match="int"):
        load_rgb(42)
    with pytest.raises(ImageLoadError, match="zero size"):
        load_rgb(Image.new("RGB", (0, 5)))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose IHDR then claims width x height (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(20000, 20000))
    pil_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as error:
        load_rgb(path)
    message = str(error.value)
    assert str(path) in message and "400000000 pixels" in message and "decompression bomb" in message
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global limit is restored after the open
    path.write_bytes(_png_claiming(9000, 8000))  # above our 64 MP, below PIL's own error level
    with pytest.raises(ImageLoadError, match="9000x8000 = 72 MP, above the limit of 64 MP"):
        load_rgb(path)
    with pytest.raises(ImageLoadError, match="decompression"):
        load_rgb(Image.new("1", (9000, 8000)))  # in-memory sources are guarded too


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.png", None, "does not exist"),
        ("empty.png", b"", "empty"),
        ("notes.png", b"these are my notes, not a picture\n" * 10, "not an image"),
        ("half.png", "truncate", "truncated"),
        ("garbled.png", "corrupt", "corrupt"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good, format="PNG"
    )
    if content == "truncate":
        content = good.getvalue()[: len(good.getvalue()) // 2]
    elif content == "corrupt":
        data = bytearray(good.getvalue())
        data[200:400] = bytes(200)  # zeroed bytes in the compressed pixel data
        content = bytes(data)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError) as error:
        load_rgb(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="not a file"):
        load_rgb(tmp_path)


def test_float_pixels_have_a_declared_value_range_and_are_never_clipped_silently():
    from hfpc_reward.images import to_unit_range

    unit = torch.linspace(0, 1, 48).reshape(1, 4, 4, 3).permute(0, 3, 1, 2)[0]  # (3,4,4) in [0,1]
    expected = np.asarray(load_rgb(unit))
    assert (np.asarray(load_rgb(unit * 2 - 1, value_range="-1,1")) == expected).all()
    assert (np.asarray(load_rgb(unit * 255, value_range="0,255")) == expected).all()
    with pytest.raises(ImageLoadError, match=r"value_range='-1,1'"):
        load_rgb(unit * 2 - 1)
    with pytest.raises(ImageLoadError, match=r"value_range='0,255'"):
        load_rgb(unit.numpy().transpose(1, 2, 0) * 255)
    with pytest.raises(ImageLoadError, match="value_range must be one of"):
        to_unit_range(unit, "0-1")
    assert torch.equal(to_unit_range(unit * 2 - 1, "-1,1"), (unit * 2 - 1 + 1) / 2)  # same type, same device
    assert (np.asarray(load_rgb(np.array([[[0, 128, 255]]], np.uint8))) == [[[0, 128, 255]]]).all()


def test_a_single_image_is_a_batch_of_one_where_asked():
    from hfpc_reward.images import as_batch

    pixels = _gradient(8, 6)
    tensor = pil_to_tensor([Image.fromarray(pixels)])
    assert len(as_batch(Image.fromarray(pixels))) == 1 and len(as_batch("x.png")) == 1
    assert len(as_batch(tensor[0])) == 1 and len(as_batch(tensor)) == 1 and len(as_batch(pixels)) == 1
    assert len(as_batch(np.zeros((6, 8), bool), masks=True)) == 1
    assert len(as_batch(np.zeros((2, 6, 8), bool), masks=True)) == 2
    with pytest.raises(ImageLoadError, match=r"\(B,3,H,W\)"):
        as_batch(torch.zeros(2, 6, 8))


def test_mask_arrays_and_tensors_of_every_common_encoding_give_the_same_mask():
    """0/1 uint8 (a segmenter's usual output) read as empty before; (H,W,1) and (1,H,W) were refused or split
    into H masks by as_batch."""
    truth = np.zeros((8, 6), bool)
    truth[2:6, 1:4] = True
    encodings = [truth, truth.astype(np.uint8), truth.astype(np.uint8) * 255, truth.astype(np.int64),
                 truth.astype(np.float32), truth.astype(np.uint16) * 65535, truth[..., None].astype(np.uint8),
                 truth[None].astype(np.uint8)]  # fmt: skip
    encodings += [torch.from_numpy(array) for array in encodings]
    for encoding in encodings:
        np.testing.assert_array_equal(load_mask(encoding), truth)
        assert len(as_batch(encoding, masks=True)) == 1


def test_an_inverted_product_mask_is_refused_with_the_fix():
    from hfpc_reward.images import InvertedMaskError, refuse_inverted_mask, refuse_repaint_mask

    original = np.full((50, 50, 3), 250, np.uint8)
    product = np.zeros((50, 50), bool)
    product[15:35, 20:30] = True
    original[product] = (20, 60, 200)
    refuse_inverted_mask(product, Image.fromarray(original))  # the right mask passes
    with pytest.raises(InvertedMaskError, match="looks inverted.*1 - mask_image"):
        refuse_inverted_mask(~product, Image.fromarray(original))
    photo = Image.fromarray(_gradient(50, 50))  # a large product on a busy photo is not a backdrop
    refuse_inverted_mask(~product, photo)
    with pytest.raises(InvertedMaskError, match="equals the pipeline's repaint mask"):
        refuse_repaint_mask(product, product.copy())
    refuse_repaint_mask(product, ~product)
