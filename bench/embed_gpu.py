"""End-to-end image embedding throughput on one GPU: JPEG bytes in, L2-normalised vectors out.

One command on a GPU machine (``python bench/embed_gpu.py``) measures images/s for ViT-B/32 and ViT-L/14 with
random weights (throughput is real; vectors are meaningless), through the same code the Spark UDF runs per task
(udfs.clip.embed_images, overlapped with the model in half precision), with each decoding way of
``embed.image_decode``: ``pil`` (Pillow and the model's own transform on CPU threads) and ``auto`` (on a GPU:
JPEGs decoded in batches by nvJPEG and resized on the GPU). ``--spark`` also runs the stage's mapInPandas UDF on
a local session with one task that owns the GPU. JPEG decode is included in every figure. Bars to compare with:
~1,500 images/s reported by clip-retrieval for ViT-B/32 on one RTX 3080; our goal is >= 5,000 images/s on one
H100 for ViT-B/32.

    python bench/embed_gpu.py                                   # GPU: both models
    python bench/embed_gpu.py --quick --spark                   # GPU: a short smoke run of both paths
    python bench/embed_gpu.py --device cpu --quick --spark      # the same code on a CPU (a logic check only)

No network is needed: the models are built from open_clip's bundled configs and tokenizer, the JPEGs are cut
from scikit-image's bundled photographs, and the ``--spark`` session is plain Spark (no Delta jars to fetch).
The per-task figure needs no Spark or Java (torch, open_clip, pillow, scikit-image, pydantic and PyYAML), so it
runs on a GPU machine that has only a PyTorch image.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REGISTRY = Path(__file__).resolve().parents[1] / "conf" / "models.yaml"


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs of typical web size (320 to 640 px a side) cut from scikit-image's photographs."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    distinct = min(n, 256)  # repeat the first 256 so that generating inputs does not dominate large runs
    out = []
    for i in range(distinct):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = int(rng.integers(320, 641)), int(rng.integers(320, 641))
        img = src.resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(75, 95)))
        out.append(buf.getvalue())
    return [out[i % distinct] for i in range(n)]


def run_direct(spec: Any, blobs: list[bytes], device: str, decode: str, args: argparse.Namespace) -> float:
    """Images/s of udfs.clip.embed_images in this process (what one Spark task does)."""
    import torch

    from udfs.clip import embed_images, load_encoder

    enc = load_encoder(spec, device, args.precision)
    items = list(enumerate(blobs))
    kwargs = {
        "decode_threads": args.decode_threads,
        "prefetch": args.prefetch,
        "draft": args.jpeg_draft,
        "decode": decode,
    }
    for _ in embed_images(enc, items[: args.batch_size * 2], args.batch_size, **kwargs):
        pass  # warm-up: kernels, allocator, thread pools
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    for batch in embed_images(enc, items, args.batch_size, **kwargs):
        done += len(batch.ids)
    elapsed = time.perf_counter() - start
    assert done == len(blobs), f"{len(blobs) - done} images were rejected"
    return done / elapsed


def run_spark(spec: Any, blobs: list[bytes], args: argparse.Namespace) -> float:
    """Images/s of the stage's UDF on a local session with one task (reading the JPEGs from parquet)."""
    from pyspark.sql import types as T

    from realsyn.config_sections import EmbedConfig, SparkConfig
    from realsyn.spark import ARROW_BATCH_CONF, get_spark
    from realsyn.stages.embed import embed_images

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark(
        SparkConfig(
            master="local[1]",
            app_name="bench-embed-gpu",
            delta_from_maven=False,  # a GPU machine may have no route to Maven Central; the no-op sink needs no Delta
            conf={"spark.ui.enabled": "false", "spark.driver.memory": "8g"},
        )
    )
    spark.sparkContext.setLogLevel("ERROR")
    cfg = EmbedConfig(
        model=spec.name,
        device="cpu" if args.device == "cpu" else "auto",
        precision=args.precision,
        image_batch_size=args.batch_size,
        image_arrow_batch_size=args.batch_size * 2,
        decode_threads=args.decode_threads,
        prefetch_batches=args.prefetch,
        jpeg_draft=args.jpeg_draft,
        image_decode=args.decode[0],
    )
    schema = T.StructType([T.StructField("image_id", T.StringType()), T.StructField("content", T.BinaryType())])
    with tempfile.TemporaryDirectory() as folder:
        rows = [(str(i), b) for i, b in enumerate(blobs)]
        spark.createDataFrame(rows, schema).coalesce(1).write.parquet(f"{folder}/images")
        df = spark.read.parquet(f"{folder}/images")
        spark.conf.set(ARROW_BATCH_CONF, str(cfg.image_arrow_batch_size))
        embed_images(df.limit(args.batch_size), cfg, spec).write.format("noop").mode("overwrite").save()  # warm-up
        start = time.perf_counter()
        embed_images(df, cfg, spec).write.format("noop").mode("overwrite").save()
        elapsed = time.perf_counter() - start
    spark.stop()
    return len(blobs) / elapsed


def main(argv: list[str] | None = None) -> None:
    """Measure each model and decoding way; the last line is ``embed_gpu_images_per_s_<first model>: <x>`` with the
    first decoding way (ViT-B/32, auto: JPEGs decoded on the GPU, by default)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-b-32-random", "vit-l-14-random"])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 images in batches of 16 per model")
    parser.add_argument("--images", type=int, default=None, help="JPEGs per model (default 20,000; quick 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 512; quick 16)")
    parser.add_argument("--decode-threads", type=int, default=os.cpu_count() or 4)
    parser.add_argument("--prefetch", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a logic check")
    parser.add_argument("--jpeg-draft", action="store_true", help="DCT-domain JPEG downscale (not pixel-exact)")
    parser.add_argument(
        "--decode",
        nargs="+",
        default=["auto", "pil"],
        choices=["auto", "pil", "torch"],
        help="image decoding ways to time (embed.image_decode; the first is the key figure and the Spark run's)",
    )
    parser.add_argument("--spark", action="store_true", help="also run the Spark UDF with one local task")
    args = parser.parse_args(argv)
    args.images = args.images or (64 if args.quick else 20_000)
    args.batch_size = args.batch_size or (16 if args.quick else 512)

    import torch

    from udfs.models import get_spec, load_registry

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a logic check")
    gpu = torch.cuda.get_device_name(0) if args.device != "cpu" else "none (CPU logic check)"
    blobs = web_jpegs(args.images)
    print(f"GPU: {gpu}; CPU cores: {os.cpu_count()}; {len(blobs)} JPEGs ({sum(map(len, blobs)) / 1e6:.0f} MB)")
    print(
        f"batch {args.batch_size}, decode threads {args.decode_threads}, precision {args.precision}, "
        f"jpeg draft {args.jpeg_draft}; random weights: throughput only, vectors meaningless"
    )
    results: list[tuple[str, float]] = []
    for name in args.models:
        spec = get_spec(load_registry(REGISTRY), name, str(REGISTRY))
        for decode in args.decode:
            rate = run_direct(spec, blobs, args.device, decode, args)
            results.append((name, rate))
            print(f"{name}, decode {decode}: {rate:,.0f} images/s (per-task pipeline)", flush=True)
        if args.spark:
            print(
                f"{name}, decode {args.decode[0]}: {run_spark(spec, blobs, args):,.0f} images/s (Spark UDF)", flush=True
            )
    key = results[:: len(args.decode)]  # each model with the first decoding way
    for name, rate in key[1:] + key[:1]:  # the first model's figure last: the key one
        print(f"embed_gpu_images_per_s_{name.replace('-', '_')}: {rate:.1f}")


if __name__ == "__main__":
    main()
