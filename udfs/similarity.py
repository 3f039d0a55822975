"""The image / synthetic-text similarity filter: keep a pair whose CLIP cosine lies inside the model's band.

The RealSyn paper keeps cosines in [0.51, 0.61] on the EVA02-CLIP scale: above it the text tends to copy what is
written in the image (OCR-like), below it the text no longer describes the image. The band depends on the CLIP
model, so it lives in the model's registry entry (``similarity_band``). Bounds are inclusive.
"""

from __future__ import annotations

import math

REASON_TOO_SIMILAR = "too_similar_ocr_like"
REASON_TOO_DISSIMILAR = "too_dissimilar"
REASON_NO_TEXT_EMBEDDING = "text_not_embeddable"


def band_reason(cosine: float | None, low: float, high: float) -> str | None:
    """None to keep a pair with ``low <= cosine <= high``; otherwise the reason of the side it fell off (a missing
    or non-finite cosine is ``text_not_embeddable``)."""
    if cosine is None or not math.isfinite(cosine):
        return REASON_NO_TEXT_EMBEDDING
    if cosine > high:
        return REASON_TOO_SIMILAR
    if cosine < low:
        return REASON_TOO_DISSIMILAR
    return None


def band_detail(cosine: float | None, low: float, high: float) -> str:
    """The detail of a band reject: the cosine and the band it missed."""
    shown = "none" if cosine is None else f"{cosine:.4f}"
    return f"cosine {shown} outside [{low}, {high}]"
