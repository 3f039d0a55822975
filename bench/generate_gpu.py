"""GPU throughput of the generate stage: vLLM inside the Spark UDF versus vLLM's offline LLM.generate, and the
captioner's images per second, on one GPU.

Prepared for a machine with a CUDA GPU and ``pip install vllm``; nothing here runs on a CPU. The LLM is
``llama-3-8b-random`` (Llama-3-8B's architecture, random weights loaded by vLLM's dummy loader, the local
tokenizer): every prompt gets exactly ``--new-tokens`` (default 64) output tokens (min = max), so the work is fixed
whatever the random weights write. Side by side in one run:

- bare: one ``vllm.LLM`` in this process, ``generate`` over all prompts at once (greedy);
- UDF: ``realsyn.synthetic_frames.rewrite_frame`` on a local Spark session with one task (the GPU's), which starts one
  engine in its Python worker and hands it each Arrow batch (``--arrow-batch`` prompts), after a warm-up job.

Then the captioner: ``blip-base``-shaped random weights are not available offline, so ``--captioner`` defaults to
the registry's ``tiny-random-captioner`` unless given a real entry whose weights are on disk; images/s through
``udfs.captioner.caption_images`` at ``--caption-batch``.

    python bench/generate_gpu.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REGISTRY = Path(__file__).resolve().parents[1] / "conf" / "models.yaml"


def main(argv: list[str] | None = None) -> None:
    """Run both LLM sides and the captioner; the last line is ``generate_gpu_udf_vs_vllm: <ratio>``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer prompts and images")
    parser.add_argument("--llm", default="llama-3-8b-random")
    parser.add_argument("--captioner", default="tiny-random-captioner")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--arrow-batch", type=int, default=1024)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--caption-batch", type=int, default=128)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = parser.parse_args(argv)
    n = args.prompts or (512 if args.quick else 4096)
    n_images = args.images or (512 if args.quick else 4096)

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/generate_gpu.py needs a CUDA GPU")
    sys.path.insert(0, str(REGISTRY.parents[1]))
    from bench.generate import inputs
    from realsyn.config_sections import GenerateConfig
    from udfs.llm import PromptTemplate, get_llm
    from udfs.models import get_spec, load_registry

    registry = load_registry(REGISTRY)
    spec = get_spec(registry, args.llm, kind="llm")
    cfg = GenerateConfig(
        llm=args.llm,
        backend="vllm",
        device="cuda",
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        reject_truncated=False,
        arrow_batch_size=args.arrow_batch,
        vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_model_len=2048,
    )
    rows = inputs(n)
    template = PromptTemplate(cfg.prompt_version, cfg.system_prompt, cfg.user_prompt)
    chats = [template.messages(r, c, t) for _, r, c, t in rows]
    print(f"{torch.cuda.get_device_name(0)}; model {spec.name} (random weights: texts meaningless)")

    # Bare vLLM in this process (warm-up on a slice first), then freed before Spark's worker starts its own.
    engine = get_llm(
        spec, "cuda:0", "auto", backend="vllm", gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=2048
    )
    engine.generate(chats[:64], args.new_tokens, args.new_tokens)
    start = time.perf_counter()
    gens = engine.generate(chats, args.new_tokens, args.new_tokens)
    bare = sum(g.n_tokens for g in gens) / (time.perf_counter() - start)
    print(f"bare vLLM LLM.generate: {bare:,.0f} tokens/s ({len(gens)} prompts x {args.new_tokens} tokens)")
    del engine
    from udfs import models

    models._CACHE.clear()
    import gc

    gc.collect()
    torch.cuda.empty_cache()

    udf = udf_tokens_per_s(spec, cfg, rows)
    print(f"Spark UDF (vLLM in the Python worker): {udf:,.0f} tokens/s")

    images = caption_images_per_s(get_spec(registry, args.captioner, kind="captioner"), n_images, args.caption_batch)
    print(f"captioner {args.captioner}: {images:,.1f} images/s at batch {args.caption_batch}")
    print(f"generate_gpu_udf_vs_vllm: {udf / bare:.2f}")


def udf_tokens_per_s(spec: Any, cfg: Any, rows: list[tuple[str, str, str, list[str]]]) -> float:
    """Generated tokens per second through the stage's rewrite UDF on a one-task local session."""
    from pyspark.sql import functions as F

    from realsyn.config_sections import SparkConfig
    from realsyn.spark import ARROW_BATCH_CONF, get_spark
    from realsyn.synthetic_frames import rewrite_frame

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark(
        SparkConfig(
            master="local[1]",
            app_name="bench-generate-gpu",
            conf={"spark.ui.enabled": "false", "spark.driver.memory": "8g", "spark.python.worker.reuse": "true"},
        )
    )
    spark.conf.set(ARROW_BATCH_CONF, str(cfg.arrow_batch_size))
    with tempfile.TemporaryDirectory() as folder:
        schema = "image_id string, retrieved_text string, caption string, tags array<string>"
        spark.createDataFrame(rows, schema).coalesce(1).write.parquet(f"{folder}/p")
        df = spark.read.parquet(f"{folder}/p")
        rewrite_frame(df.limit(64), cfg, spec).agg(F.sum("n_tokens")).first()  # start the engine in the worker
        start = time.perf_counter()
        row = rewrite_frame(df, cfg, spec).agg(F.sum("n_tokens").alias("t")).first()
        seconds = time.perf_counter() - start
    spark.stop()
    return int(row["t"] if row is not None else 0) / seconds


def caption_images_per_s(spec: Any, n: int, batch: int) -> float:
    """Images per second of the captioner on the GPU (decode included), after a warm-up batch."""
    from bench.embed import photos
    from udfs.captioner import caption_images, get_captioner

    cap = get_captioner(spec, "cuda:0")
    blobs = photos(n)
    list(caption_images(cap, [(i, b) for i, b in enumerate(blobs[:batch])], batch, 30, decode_threads=8))
    start = time.perf_counter()
    done = sum(len(b.ids) for b in caption_images(cap, list(enumerate(blobs)), batch, 30, decode_threads=8))
    return done / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
