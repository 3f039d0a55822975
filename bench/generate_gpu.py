"""GPU throughput of the generate stage: vLLM inside the Spark UDF versus vLLM's offline LLM.generate, the
captioner's images per second, and vlm mode's images and tokens per second, on one GPU.

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

Then vlm mode (``generate.mode: vlm``): ``--vlm`` (default ``qwen2-vl-2b-random``, Qwen2-VL-2B's architecture with
random weights and the locally built processor; a real entry such as ``qwen2-vl-2b-instruct`` where its weights are
on disk) through ``udfs.vlm.write_texts``, the stage's batch function, decode included: photos scaled to
``--vlm-pixels`` (448 x 448: 256 image tokens), exactly ``--new-tokens`` output tokens each, on every backend of
``--vlm-backends`` (transformers at ``--vlm-batch``; vllm, one engine, when vLLM is installed). It prints images/s and
generated tokens/s per backend. ``--parts`` picks what runs (``vlm`` alone needs no vLLM).

    python bench/generate_gpu.py --quick
    python bench/generate_gpu.py --quick --parts vlm --vlm-backends transformers
"""

from __future__ import annotations

import argparse
import importlib.util
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
    parser.add_argument("--parts", default="llm,captioner,vlm", help="comma-separated: llm, captioner, vlm")
    parser.add_argument("--vlm", default="qwen2-vl-2b-random")
    parser.add_argument("--vlm-images", type=int, default=None)
    parser.add_argument("--vlm-batch", type=int, default=32)
    parser.add_argument("--vlm-pixels", type=int, default=200_704)
    parser.add_argument("--vlm-backends", default="transformers,vllm", help="comma-separated: transformers, vllm")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"llm", "captioner", "vlm"}:
        parser.error(f"--parts: unknown {', '.join(sorted(parts - {'llm', 'captioner', 'vlm'}))}")
    n = args.prompts or (512 if args.quick else 4096)
    n_images = args.images or (512 if args.quick else 4096)
    n_vlm = args.vlm_images or (256 if args.quick else 2048)

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/generate_gpu.py needs a CUDA GPU")
    sys.path.insert(0, str(REGISTRY.parents[1]))
    from udfs.models import get_spec, load_registry

    registry = load_registry(REGISTRY)
    print(torch.cuda.get_device_name(0))
    if "captioner" in parts:
        spec = get_spec(registry, args.captioner, kind="captioner")
        images = caption_images_per_s(spec, n_images, args.caption_batch)
        print(f"captioner {args.captioner}: {images:,.1f} images/s at batch {args.caption_batch}")
    if "vlm" in parts:
        spec = get_spec(registry, args.vlm, kind="vlm")
        for backend in args.vlm_backends.split(","):
            if backend == "vllm" and importlib.util.find_spec("vllm") is None:
                print("vlm vllm: skipped (vllm is not installed)")
                continue
            per_s, tokens_per_s = vlm_rates(spec, backend, n_vlm, args, args.vlm_batch)
            free_gpu()
            print(
                f"vlm {args.vlm} ({backend}): {per_s:,.1f} images/s, {tokens_per_s:,.0f} tokens/s "
                f"({n_vlm} images <= {args.vlm_pixels:,} px x {args.new_tokens} tokens"
                + (f", batch {args.vlm_batch})" if backend == "transformers" else ")")
            )
    if "llm" in parts:
        llm_rates(registry, args, n)


def llm_rates(registry: Any, args: argparse.Namespace, n: int) -> None:
    """Bare vLLM, then the Spark UDF with vLLM in its worker; the last line is their ratio."""
    from bench.generate import inputs
    from realsyn.config_sections import GenerateConfig
    from udfs.llm import PromptTemplate, get_llm
    from udfs.models import get_spec

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
    print(f"model {spec.name} (random weights: texts meaningless)")

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
    free_gpu()

    udf = udf_tokens_per_s(spec, cfg, rows)
    print(f"Spark UDF (vLLM in the Python worker): {udf:,.0f} tokens/s")
    print(f"generate_gpu_udf_vs_vllm: {udf / bare:.2f}")


def free_gpu() -> None:
    """Drop every model loaded in this process (udfs.models' cache) and give its GPU memory back."""
    import gc

    import torch

    from udfs import models

    models._CACHE.clear()
    gc.collect()
    torch.cuda.empty_cache()


def vlm_rates(
    spec: Any, backend: str, n: int, args: argparse.Namespace, batch: int, device: str = "cuda:0"
) -> tuple[float, float]:
    """Images/s and generated tokens/s of vlm mode's batch function (udfs.vlm.write_texts: decode, scale, generate,
    check) with ``backend`` on the GPU, after a warm-up batch; every image gets exactly ``args.new_tokens`` tokens."""
    from bench.embed import photos
    from bench.generate import inputs
    from realsyn.config_sections import GenerateConfig
    from udfs.vlm import VlmLimits, VlmPrompt, get_vlm, write_texts

    g = GenerateConfig()
    prompt = VlmPrompt(g.vlm_prompt_version, g.vlm_system_prompt, g.vlm_user_prompt)
    model = get_vlm(
        spec,
        device,
        "auto",
        backend=backend,
        batch_size=batch,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=4096,
    )
    limits = VlmLimits(args.new_tokens, args.new_tokens, 10**6, False, image_pixels=args.vlm_pixels)
    rows: list[tuple[int, bytes, str, list[str]]] = [
        (i, b, r, []) for i, (b, (_, r, _, _)) in enumerate(zip(photos(n), inputs(n), strict=True))
    ]
    write_texts(model, rows[:batch], prompt, limits, decode_threads=8)
    start = time.perf_counter()
    written = write_texts(model, rows, prompt, limits, decode_threads=8)
    seconds = time.perf_counter() - start
    return len(written) / seconds, sum(w.n_tokens for w in written) / seconds


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
