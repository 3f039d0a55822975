"""Embedding throughput: the Spark UDFs of realsyn.stages.embed versus a bare PyTorch loop, side by side in one run.

Both sides embed the same JPEG bytes (decode and the model's own preprocessing included) and the same sentences,
with the same model and batch size. The Spark side runs the stage's mapInPandas UDFs on a local session (one task
per core) into a no-op sink, after a warm-up job that starts the Python workers and loads the model in them; the
bare side is a single-process loop (decode, transform, forward, normalise) with 1 and with all cores' PyTorch
threads, keeping the faster, after an untimed warm-up batch.

The default model has random weights: throughput is real, the vectors are meaningless as embeddings.

    python bench/embed.py --quick
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Any

import numpy as np


def photos(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs cut from scikit-image's real photographs (sizes 256 to 512 px a side)."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(min(h, 256), h + 1)), int(rng.integers(min(w, 256), w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        buf = io.BytesIO()
        Image.fromarray(src[y : y + ch, x : x + cw]).save(buf, "JPEG", quality=int(rng.integers(75, 95)))
        out.append(buf.getvalue())
    return out


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 8 to 30 words."""
    words = [
        "a",
        "the",
        "dog",
        "cat",
        "child",
        "woman",
        "man",
        "runs",
        "sits",
        "holds",
        "red",
        "blue",
        "green",
        "small",
        "large",
        "old",
        "young",
        "street",
        "beach",
        "park",
        "table",
        "window",
        "kitchen",
        "mountain",
        "river",
        "bridge",
        "car",
        "bicycle",
        "with",
        "near",
        "under",
        "over",
        "beside",
        "while",
        "during",
        "morning",
        "evening",
        "light",
        "shadow",
        "wooden",
        "glass",
        "stone",
        "crowd",
        "market",
    ]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, int(rng.integers(8, 31)))) for _ in range(n)]


class BareLoop:
    """A plain PyTorch loop over the inputs: decode, the model's transform, forward, normalise (no threads)."""

    def __init__(self, spec: Any, blobs: list[bytes], texts: list[str], batch: int, text_batch: int) -> None:
        from udfs.clip import load_encoder

        self.enc = load_encoder(spec, "cpu")
        assert self.enc.model_transform is not None
        # Untimed warm-up, as the Spark side gets: the first forward pays for allocator and kernel set-up.
        for threads in (1, os.cpu_count() or 1):
            self.images(blobs[:batch], batch, threads)
            self.sentences(texts[:text_batch], text_batch, threads)

    def images(self, blobs: list[bytes], batch: int, threads: int) -> float:
        """Images per second with ``threads`` PyTorch threads."""
        import torch
        from PIL import Image

        torch.set_num_threads(threads)
        model, transform = self.enc.model, self.enc.model_transform
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(blobs), batch):
                chunk = blobs[i : i + batch]
                pixels = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in chunk])
                torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
        return len(blobs) / (time.perf_counter() - start)

    def sentences(self, texts: list[str], batch: int, threads: int) -> float:
        """Sentences per second with ``threads`` PyTorch threads."""
        import torch

        torch.set_num_threads(threads)
        model, tokenize = self.enc.model, self.enc.tokenize
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                torch.nn.functional.normalize(model.encode_text(tokenize(texts[i : i + batch])), dim=-1).numpy()
        return len(texts) / (time.perf_counter() - start)


class SparkUdfs:
    """The stage's mapInPandas UDFs on a local session (one task per core) into a no-op sink."""

    def __init__(self, spec: Any, cfg: Any, blobs: list[bytes], texts: list[str], partitions: int, folder: str):
        from pyspark.sql import types as T

        from realsyn.config_sections import SparkConfig
        from realsyn.spark import get_spark

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        self.spec, self.cfg, self.partitions = spec, cfg, partitions
        self.n_images, self.n_texts = len(blobs), len(texts)
        self.spark = get_spark(
            SparkConfig(
                master=f"local[{partitions}]",
                app_name="bench-embed",
                conf={"spark.ui.enabled": "false", "spark.driver.memory": "4g", "spark.python.worker.reuse": "true"},
            )
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        img = T.StructType([T.StructField("image_id", T.StringType()), T.StructField("content", T.BinaryType())])
        txt = T.StructType([T.StructField("sentence_id", T.StringType()), T.StructField("text", T.StringType())])
        for name, rows, schema in (("images", blobs, img), ("sentences", texts, txt)):
            df = self.spark.createDataFrame([(str(i), r) for i, r in enumerate(rows)], schema)
            df.repartition(partitions).write.mode("overwrite").parquet(f"{folder}/{name}")
        self.image_df = self.spark.read.parquet(f"{folder}/images")
        self.text_df = self.spark.read.parquet(f"{folder}/sentences")

    def _run(self, df: Any, arrow_batch: int) -> float:
        from realsyn.spark import ARROW_BATCH_CONF

        self.spark.conf.set(ARROW_BATCH_CONF, str(arrow_batch))
        start = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - start

    def warm_up(self) -> float:
        """Start one Python worker per task slot, load the model in each and run one full batch there (seconds).

        Spark stops Python workers idle for a minute, so this runs again right before every timed job. A full
        batch per task, as the bare loop's warm-up: the first forward at a new batch shape sets up kernels.
        """
        from realsyn.stages.embed import embed_images, embed_sentences

        n = self.partitions
        images = self.image_df.limit(n * self.cfg.image_batch_size).repartition(n)
        texts = self.text_df.limit(n * self.cfg.text_batch_size).repartition(n)
        start = time.perf_counter()
        self._run(embed_images(images, self.cfg, self.spec), self.cfg.image_arrow_batch_size)
        self._run(embed_sentences(texts, self.cfg, self.spec), self.cfg.text_arrow_batch_size)
        return time.perf_counter() - start

    def images(self) -> float:
        """Images per second (after a warm-up that is not timed)."""
        from realsyn.stages.embed import embed_images

        self.warm_up()
        df = embed_images(self.image_df, self.cfg, self.spec)
        return self.n_images / self._run(df, self.cfg.image_arrow_batch_size)

    def sentences(self) -> float:
        """Sentences per second (after a warm-up that is not timed)."""
        from realsyn.stages.embed import embed_sentences

        self.warm_up()
        df = embed_sentences(self.text_df, self.cfg, self.spec)
        return self.n_texts / self._run(df, self.cfg.text_arrow_batch_size)


def main(argv: list[str] | None = None) -> None:
    """Run both sides and print the ratios; the last line is ``embed_udf_vs_bare: <min ratio>``."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run (under ~2 minutes on 2 cores)")
    parser.add_argument("--model", default="small-random", help="registry name in conf/models.yaml")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-batch-size", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=os.cpu_count() or 2, help="Spark tasks (one per core)")
    parser.add_argument("--decode-threads", type=int, default=1, help="decode threads per Spark task")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2 quick, 3 full)")
    args = parser.parse_args(argv)
    n_images = args.images or (192 if args.quick else 512)
    n_texts = args.sentences or (512 if args.quick else 4096)
    args.rounds = args.rounds or (2 if args.quick else 3)

    from realsyn.config_sections import EmbedConfig
    from realsyn.stages.embed import resolve_model

    cfg = EmbedConfig(
        model=args.model,
        device="cpu",
        image_batch_size=args.batch_size,
        text_batch_size=args.text_batch_size,
        image_arrow_batch_size=args.batch_size * 4,
        text_arrow_batch_size=args.text_batch_size * 4,
        decode_threads=args.decode_threads,
    )
    spec = resolve_model(cfg)
    blobs, texts = photos(n_images), sentences(n_texts)
    mb = sum(map(len, blobs)) / 1e6
    print(f"model {spec.name} ({'random weights: vectors meaningless' if spec.random_init else spec.pretrained})")
    print(
        f"inputs: {n_images} JPEGs ({mb:.1f} MB), {n_texts} sentences; batch {args.batch_size} / "
        f"{args.text_batch_size}; {os.cpu_count()} cores"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        udfs = SparkUdfs(spec, cfg, blobs, texts, args.partitions, folder)
        warm = udfs.warm_up()
        bare = BareLoop(spec, blobs, texts, args.batch_size, args.text_batch_size)
        # Alternate the two sides so that load from other processes hits both alike; report medians. The bare
        # loop runs with 1 and with all cores' PyTorch threads and keeps the faster (the harder baseline).
        threads = sorted({1, os.cpu_count() or 1})
        for _ in range(args.rounds):
            bare_images = max(bare.images(blobs, args.batch_size, t) for t in threads)
            udf_images = udfs.images()
            bare_texts = max(bare.sentences(texts, args.text_batch_size, t) for t in threads)
            rows.append((bare_images, udf_images, bare_texts, udfs.sentences()))
        udfs.spark.stop()
    print(
        f"{'round':<8}{'bare img/s':>12}{'UDF img/s':>12}{'ratio':>8}{'bare sent/s':>13}{'UDF sent/s':>12}{'ratio':>8}"
    )
    for i, (bi, ui, bt, ut) in enumerate(rows):
        print(f"{i:<8}{bi:>12.1f}{ui:>12.1f}{ui / bi:>8.2f}{bt:>13.1f}{ut:>12.1f}{ut / bt:>8.2f}")
    img_ratio = float(np.median([ui / bi for bi, ui, _, _ in rows]))
    txt_ratio = float(np.median([ut / bt for _, _, bt, ut in rows]))
    print(f"Spark warm-up (workers start, import torch/open_clip, load model): {warm:.1f} s, not in the rates")
    print("random weights: throughput only, the vectors are meaningless as embeddings")
    print(f"embed_udf_vs_bare_images: {img_ratio:.2f}")
    print(f"embed_udf_vs_bare_sentences: {txt_ratio:.2f}")
    print(f"embed_udf_vs_bare: {min(img_ratio, txt_ratio):.2f}")


if __name__ == "__main__":
    main()
