"""ADM center crop: golden against the reference formula written with PIL only; RGB conversion of odd modes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jitkit.data.crop import UnreadableImage, center_crop_arr, load_cropped, load_rgb, to_rgb


def reference_crop(img: Image.Image, s: int) -> Image.Image:
    """JIT_SPEC Data: while the short side >= 2s halve both sides (integer division) with BOX; scale by
    s / short side with sides rounded, BICUBIC; crop the centre at ((H - s)//2, (W - s)//2)."""
    while min(img.size) >= 2 * s:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    scale = s / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    left = (img.size[0] - s) // 2
    top = (img.size[1] - s) // 2
    return img.crop((left, top, left + s, top + s))


def fixed_image(w: int, h: int) -> Image.Image:
    """A deterministic, detailed RGB test image made with PIL only."""
    r = Image.linear_gradient("L").resize((w, h))
    g = Image.radial_gradient("L").resize((w, h))
    b = Image.effect_mandelbrot((w, h), (-2.0, -1.2, 0.8, 1.2), 40)
    return Image.merge("RGB", (r, g, b))


@pytest.mark.parametrize(
    "w,h,s", [(700, 523, 128), (523, 700, 64), (301, 300, 256), (40, 30, 64), (64, 64, 64)]
)
def test_center_crop_golden(w, h, s):
    img = fixed_image(w, h)
    got = center_crop_arr(img, s)
    want = reference_crop(img, s)
    assert got.size == (s, s) and got.mode == "RGB"
    assert got.tobytes() == want.tobytes()


def test_box_halving_matters():
    # the golden test can fail: a direct bicubic resize from 700x523 gives different pixels
    img = fixed_image(700, 523)
    direct = img.resize((round(700 * 128 / 523), 128), resample=Image.BICUBIC)
    left = (direct.size[0] - 128) // 2
    direct = direct.crop((left, 0, left + 128, 128))
    assert direct.tobytes() != center_crop_arr(img, 128).tobytes()


def test_odd_offsets():
    # non-square after resize with an odd excess: the crop offset rounds down
    img = Image.new("RGB", (35, 32))
    px = img.load()
    for x in range(35):
        for y in range(32):
            px[x, y] = (x * 7 % 256, y * 8, 0)
    out = np.asarray(center_crop_arr(img, 32))
    np.testing.assert_array_equal(out, np.asarray(img)[:, 1:33])


def test_modes_convert_to_rgb(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 100, np.uint8), "L")
    assert np.asarray(to_rgb(gray))[0, 0].tolist() == [100, 100, 100]
    rgba = Image.fromarray(np.dstack([np.full((8, 8), c, np.uint8) for c in (10, 20, 30, 0)]), "RGBA")
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]
    # 16-bit: scaled to 8 bits, not clipped to white
    a16 = np.full((10, 10), 32896, np.uint16)  # 128 * 257
    p16 = tmp_path / "g16.png"
    Image.fromarray(a16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    rgb = load_rgb(p16)
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [128, 128, 128]
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [200, 100, 50]


def test_tiny_image_is_upscaled(tmp_path):
    p = tmp_path / "tiny.png"
    Image.new("RGB", (5, 3), (9, 8, 7)).save(p)
    out = load_cropped(p, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert (out[:, 16, 16] == [9, 8, 7]).all()


def test_unreadable_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    good = tmp_path / "good.jpg"
    fixed_image(64, 64).save(good, quality=90)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(UnreadableImage, match="0 bytes"):
        load_rgb(empty)
    with pytest.raises(UnreadableImage, match="not an image"):
        load_rgb(text)
    with pytest.raises(UnreadableImage):
        load_rgb(trunc)
    assert load_rgb(good).size == (64, 64)


@pytest.mark.parametrize(
    "orientation,turn", [(1, None), (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270)]
)
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    # a camera stores the pixels as shot and the rotation in the EXIF tag; viewers (and training) apply it
    stored = fixed_image(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        decoded = im.convert("RGB")  # the pixels as stored, for comparison
    want = decoded if turn is None else decoded.transpose(turn)
    got = load_rgb(path)
    assert got.size == want.size and got.tobytes() == want.tobytes()
    assert got.size == ((48, 32) if orientation in (1, 3) else (32, 48))
