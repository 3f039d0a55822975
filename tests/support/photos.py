"""Real photographs that ship inside PyPI packages (scikit-image, scikit-learn), and edits of them, for tests."""

from __future__ import annotations

import io

from PIL import Image
from skimage import data
from sklearn.datasets import load_sample_image


def photo(name: str) -> Image.Image:
    """An RGB photograph: a scikit-image data image by name, or scikit-learn's "china" / "flower"."""
    if name in ("china", "flower"):
        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def encode(im: Image.Image, fmt: str = "PNG", **kw: int) -> bytes:
    """The bytes of ``im`` saved as ``fmt``."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def crop(im: Image.Image, frac: float) -> Image.Image:
    """``im`` with ``frac`` of its width and height cut from every side."""
    w, h = im.size
    dx, dy = int(w * frac), int(h * frac)
    return im.crop((dx, dy, w - dx, h - dy))
