"""Where fetched image bytes go when they are not kept in the table: a folder or object-store prefix, by content.

With ``fetch.content_prefix`` set, the fetcher (:mod:`udfs.fetch`) writes each accepted image once under its
content id with :func:`store_content` and stores only the path in ``bronze.fetched_images``. Pure: no Spark import.
"""

from __future__ import annotations

import uuid
from pathlib import Path

# File name extension of each image format; any other format is stored as .bin.
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "tiff": "tif", "bmp": "bmp"}


def store_content(prefix: str, image_id: str, fmt: str | None, data: bytes) -> str:
    """Write image bytes to ``<prefix>/<id[:2]>/<id>.<ext>`` (local folder or fsspec URI); return the path.

    The name is the content hash, so a rewrite after a retry writes the same bytes to the same place. A local
    file appears whole or not at all (written under a temporary name of its own, then renamed), so one that
    exists already holds these bytes and is left alone: the same image at many URLs, fetched by many threads and
    tasks at once, is written once or a few times, never half.
    """
    path = f"{prefix.rstrip('/')}/{image_id[:2]}/{image_id}.{EXTENSIONS.get((fmt or '').lower(), 'bin')}"
    if "://" not in prefix:
        target = Path(path)
        if target.exists():
            return path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("xb") as f:
                f.write(data)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
    import fsspec

    with fsspec.open(path, "wb") as f:
        f.write(data)
    return path
