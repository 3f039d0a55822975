"""The corpus a local run generates and ingests (``pipeline.demo_corpus``), of kind ``demo.kind``: ``generated``
(:mod:`realsyn.corpus_generator`, distinct content at any size, the default) or ``photos`` (this module): a small,
seeded, interleaved corpus in both MMC4 and OBELICS layouts.

Photos: images are real photographs that ship inside PyPI packages (scikit-image's data folder, scikit-learn's sample
images) plus procedurally drawn shapes, written as files and referenced by ``file://`` URI. Each image is
described by a sentence near it; around them are distractor texts of the kinds the extraction filters must drop
(URLs, emoji, boilerplate, too short, too long) and repeated sentences for the dedup steps. Some images are
deliberately too small, too elongated, exact copies or near copies (resized, recompressed, cropped).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from realsyn.config_sections import Config, DemoCorpusConfig, IngestInput

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DOCS_PER_SHARD = 10_000
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DemoImage:
    """One image file of the corpus and the sentence that describes it."""

    path: Path
    caption: str

    @property
    def uri(self) -> str:
        """The file URI documents use to reference the image."""
        return self.path.resolve().as_uri()


# Photographs shipped with scikit-image (skimage/data) and scikit-learn (sklearn/datasets/images),
# with descriptions of what each shows.
PHOTOS: dict[str, str] = {
    "skimage:astronaut.png": "An astronaut in a flight suit smiles for an official portrait in front of a flag.",
    "skimage:chelsea.png": "A ginger tabby cat stares into the camera with wide green eyes.",
    "skimage:coffee.png": "A cup of coffee with a heart drawn in the foam sits on a saucer.",
    "skimage:rocket.jpg": "A rocket stands on the launch pad under a clear sky before lift-off.",
    "skimage:hubble_deep_field.jpg": "Hundreds of distant galaxies glow against the black background of deep space.",
    "skimage:retina.jpg": "A medical photograph shows the blood vessels spreading across a human retina.",
    "skimage:motorcycle_left.png": "A motorcycle is parked inside a room next to a wall.",
    "skimage:camera.png": "A man stands behind a camera on a tripod in an open field.",
    "skimage:coins.png": "Old coins are laid out in rows on a dark cloth.",
    "skimage:moon.png": "Craters cover the grey surface of the moon.",
    "skimage:horse.png": "The black silhouette of a horse stands against a white background.",
    "skimage:brick.png": "Rows of bricks form an old wall.",
    "skimage:grass.png": "Blades of grass fill the frame in a close-up photograph.",
    "skimage:gravel.png": "Small grey stones cover the ground of a gravel path.",
    "skimage:ihc.png": "A microscope slide shows stained tissue cells in brown and blue.",
    "sklearn:china.jpg": "A Chinese temple with a curved tiled roof stands among green trees.",
    "sklearn:flower.jpg": "A pink flower with a yellow centre blooms in the sunlight.",
}

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "orange": (240, 130, 20),
    "purple": (120, 50, 160),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COUNT_WORDS = ("one", "two", "three", "four")

# Distractors: texts that appear on real pages around images, most of which the filters must drop.
BOILERPLATE = (
    "Subscribe to our newsletter for weekly updates.",
    "All rights reserved.",
    "Home.",
    "Share this post on social media!",
    "Free shipping on all orders over fifty dollars.",
    "Posted by admin in Uncategorized.",
    "Read more about our privacy policy at https://example.com/privacy today.",
    "Best deals of the year 🔥🔥 don't miss out!",
    "Click here www.example.org/offer to claim your prize.",
    "Leave a comment below and tell us what you think.",
    "This website uses cookies to improve your experience.",
    "Next page.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Our team visited the museum last weekend and took many pictures of the old exhibits.",
    "Children play football in the park every Sunday afternoon when the weather is warm.",
    "She opened the window and looked at the rain falling on the quiet street below.",
)
LONG_SENTENCE = " ".join(["word"] * 90) + "."


def _photo_path(key: str) -> Path:
    package, _, name = key.partition(":")
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / name


def _draw_shapes(rng: random.Random, path: Path) -> str:
    """Draw a few shapes of one colour on a plain background; return the sentence that describes it."""
    shape = rng.choice(SHAPES)
    colour, background = rng.sample(sorted(COLOURS), 2)
    count = rng.randint(1, 4)
    width, height = rng.choice([(320, 240), (256, 256), (400, 300), (240, 320)])
    image = Image.new("RGB", (width, height), COLOURS[background])
    draw = ImageDraw.Draw(image)
    size = min(width, height) // 4
    for i in range(count):
        cx = (i + 1) * width // (count + 1) + rng.randint(-8, 8)
        cy = height // 2 + rng.randint(-height // 5, height // 5)
        box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=fill)
    image.save(path, quality=90)
    noun = shape if count == 1 else shape + "s"
    return f"A drawing shows {COUNT_WORDS[count - 1]} {colour} {noun} on a {background} background."


def build_images(cfg: DemoCorpusConfig, folder: Path) -> list[DemoImage]:
    """Write the image files: photographs, their near and exact copies, drawings, and filter bait."""
    rng = random.Random(cfg.seed)
    folder.mkdir(parents=True, exist_ok=True)
    images: list[DemoImage] = []
    for key, caption in PHOTOS.items():
        source = _photo_path(key)
        name = Path(key.partition(":")[2]).stem
        original = folder / f"{name}{source.suffix}"
        shutil.copyfile(source, original)
        images.append(DemoImage(original, caption))
        # An exact copy under another name: the same bytes at a second URL.
        copy = folder / f"{name}_copy{source.suffix}"
        shutil.copyfile(source, copy)
        images.append(DemoImage(copy, caption))
        # A near copy: downscaled, slightly cropped and recompressed.
        with Image.open(source) as im:
            rgb = im.convert("RGB")
            w, h = rgb.size
            near = rgb.crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w * 3 // 4, h * 3 // 4))
            near_path = folder / f"{name}_near.jpg"
            near.save(near_path, quality=70)
            images.append(DemoImage(near_path, caption))
    for i in range(cfg.synthetic_images):
        path = folder / f"drawing_{i:05d}.jpg"
        images.append(DemoImage(path, _draw_shapes(rng, path)))
    # Filter bait: an icon too small to keep and a banner too elongated to keep.
    icon = folder / "icon_small.png"
    Image.new("RGB", (48, 48), COLOURS["blue"]).save(icon)
    images.append(DemoImage(icon, "A small blue square icon."))
    banner = folder / "banner_wide.jpg"
    Image.new("RGB", (900, 120), COLOURS["orange"]).save(banner)
    images.append(DemoImage(banner, "A long orange banner stretches across the top of the page."))
    return images


def _page_texts(rng: random.Random, doc_index: int) -> list[str]:
    """Distractor sentences for one page."""
    texts = rng.sample(BOILERPLATE, k=rng.randint(3, 6))
    texts.append(f"Article number {doc_index} in our series about pictures from around the world.")
    if rng.random() < 0.1:
        texts.append(LONG_SENTENCE)
    rng.shuffle(texts)
    return texts


def _mmc4_document(rng: random.Random, index: int, images: list[DemoImage]) -> dict[str, object]:
    texts = _page_texts(rng, index)
    image_info = []
    chosen = rng.sample(images, k=rng.randint(1, 3))
    for image in chosen:
        at = rng.randint(0, len(texts))
        texts.insert(at, image.caption)
    for image in chosen:
        image_info.append(
            {
                "image_name": image.path.name,
                "raw_url": image.uri,
                "matched_text_index": texts.index(image.caption),
                "matched_sim": round(rng.uniform(0.22, 0.36), 4),
                "face_detections": None,
            }
        )
    similarity = [
        [
            info["matched_sim"] if t == info["matched_text_index"] else round(rng.uniform(0.05, 0.2), 4)
            for t in range(len(texts))
        ]
        for info in image_info
    ]
    return {
        "url": f"https://demo.realsyn.invalid/mmc4/{index}",
        "text_list": texts,
        "image_info": image_info,
        "similarity_matrix": similarity,
    }


def _obelics_document(rng: random.Random, index: int, images: list[DemoImage]) -> dict[str, object]:
    url = f"https://demo.realsyn.invalid/obelics/{index}"
    paragraphs = [" ".join(rng.sample(BOILERPLATE, k=2)) for _ in range(rng.randint(2, 4))]
    items: list[tuple[str | None, DemoImage | None]] = [(p, None) for p in paragraphs]
    for image in rng.sample(images, k=rng.randint(1, 3)):
        at = rng.randint(0, len(items))
        items.insert(at, (None, image))
        items.insert(at + 1, (f"{image.caption} {rng.choice(BOILERPLATE)}", None))
    metadata = [
        None
        if image is None
        else {
            "document_url": url,
            "unformatted_src": image.uri,
            "src": image.uri,
            "formatted_filename": image.path.stem,
            "alt_text": image.caption if rng.random() < 0.5 else "",
        }
        for _, image in items
    ]
    return {
        "images": [None if image is None else image.uri for _, image in items],
        "texts": [text for text, _ in items],
        "metadata": json.dumps(metadata),
        "general_metadata": json.dumps({"url": url, "warc_filename": f"demo-{index // 100:05d}.warc.gz"}),
    }


def generate(cfg: DemoCorpusConfig, spark: SparkSession | None = None) -> Path:
    """Write the corpus of ``cfg.kind`` under ``cfg.output`` unless it is there already; its folder. ``spark``: the
    generated kind writes its shards in Spark tasks (the photos kind is small and written here)."""
    if cfg.kind == "generated":
        from realsyn.corpus_generator import generate_corpus

        generate_corpus(cfg.generated_config(), cfg.output, spark)
        return Path(cfg.output)
    return _write_photos(cfg)


def _write_photos(cfg: DemoCorpusConfig) -> Path:
    """Write the photos corpus under ``cfg.output`` (``mmc4/``, ``obelics/``, ``images/``) unless it is there already.

    Half the documents use each layout. The same config always gives the same files; a finished corpus is
    marked by a manifest, so a rerun after a kill regenerates only an unfinished one.
    """
    out = Path(cfg.output)
    manifest = {"documents": cfg.documents, "synthetic_images": cfg.synthetic_images, "seed": cfg.seed}
    marker = out / MANIFEST
    if marker.exists() and json.loads(marker.read_text()) == manifest:
        return out
    if out.exists():
        shutil.rmtree(out)
    images = build_images(cfg, out / "images")
    rng = random.Random(cfg.seed + 1)
    n_mmc4 = (cfg.documents + 1) // 2
    (out / "mmc4").mkdir(parents=True)
    (out / "obelics").mkdir(parents=True)
    for shard, start in enumerate(range(0, n_mmc4, DOCS_PER_SHARD)):
        stop = min(start + DOCS_PER_SHARD, n_mmc4)
        with (out / "mmc4" / f"docs_shard_{shard:05d}.jsonl").open("w", encoding="utf-8") as f:
            for i in range(start, stop):
                f.write(json.dumps(_mmc4_document(rng, i, images), ensure_ascii=False) + "\n")
    n_obelics = cfg.documents - n_mmc4
    for shard, start in enumerate(range(0, n_obelics, DOCS_PER_SHARD)):
        stop = min(start + DOCS_PER_SHARD, n_obelics)
        rows = [_obelics_document(rng, i, images) for i in range(start, stop)]
        pq.write_table(pa.Table.from_pylist(rows), out / "obelics" / f"docs_shard_{shard:05d}.parquet")
    marker.write_text(json.dumps(manifest))
    return out


def with_demo_inputs(cfg: Config) -> Config:
    """``cfg`` with the ingest inputs pointing at the demo corpus written under ``cfg.demo.output``, and that
    folder among ``fetch.file_roots`` (the corpus references its images by ``file://`` URIs there)."""
    out = Path(cfg.demo.output)
    if cfg.demo.kind == "generated":
        from realsyn.corpus_generator import ingest_inputs

        inputs = ingest_inputs(out, cfg.demo.generated.layout)
    else:
        inputs = [
            IngestInput(path=str(out / "mmc4"), layout="mmc4", format="jsonl", source="demo-mmc4"),
            IngestInput(path=str(out / "obelics"), layout="obelics", format="parquet", source="demo-obelics"),
        ]
    roots = list(cfg.fetch.file_roots)
    if not any(Path(r).resolve() == out.resolve() for r in roots):
        roots.append(str(out))
    return cfg.model_copy(
        update={
            "ingest": cfg.ingest.model_copy(update={"inputs": inputs}),
            "fetch": cfg.fetch.model_copy(update={"file_roots": roots}),
        }
    )
