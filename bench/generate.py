"""LLM rewrite throughput: the generate stage's Spark UDF versus a bare transformers generate loop, in one run.

Both sides write for the same prompts (the stage's prompt template over synthetic retrieved texts, captions and
tags), with the same model, batch size and a fixed number of new tokens per prompt (min = max, so the work is the
same whatever the random weights write). The Spark side runs ``realsyn.synthetic_frames.rewrite_frame`` (the stage's
mapInPandas UDF: chat template, left padding, batched greedy generate, output checks) on a local session (one task
per core) into a no-op sink, after a warm-up job that starts the Python workers and loads the model in them; the
bare side is one process rendering the same chats and calling ``model.generate`` batch by batch, with 1 and with
all cores' PyTorch threads, keeping the faster, after an untimed warm-up batch.

The default model has random weights: throughput is real, the texts are meaningless.

    python bench/generate.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["a", "the", "dog", "cat", "child", "woman", "man", "bridge", "river", "market", "old", "red", "blue"]


def inputs(n: int, seed: int = 0) -> list[tuple[str, str, str, list[str]]]:
    """``n`` (image_id, retrieved text, caption, tags) rows: texts of 8 to 30 words, captions of 4 to 9, 0-5 tags."""
    rng = np.random.default_rng(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi + 1)))).capitalize()

    return [
        (str(i), words(8, 30) + ".", words(4, 9), [str(t) for t in rng.choice(WORDS, int(rng.integers(0, 6)))])
        for i in range(n)
    ]


class Bare:
    """The model called directly: render chats, tokenize left-padded, generate, count new tokens."""

    def __init__(self, spec: Any, batch: int) -> None:
        from udfs.llm import load_transformers_llm

        self.llm = load_transformers_llm(spec, "cpu", "auto", batch)
        self.batch = batch

    def run(self, chats: list[list[dict[str, str]]], new_tokens: int, threads: int) -> float:
        """Generated tokens per second with ``threads`` PyTorch threads."""
        import torch

        from udfs.llm import render

        torch.set_num_threads(threads)
        tok, model = self.llm.tokenizer, self.llm.model
        tokens = 0
        start = time.perf_counter()
        for i in range(0, len(chats), self.batch):
            prompts = [render(tok, c) for c in chats[i : i + self.batch]]
            enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            tokens += (out.shape[1] - enc["input_ids"].shape[1]) * len(texts)
        return tokens / (time.perf_counter() - start)


class Udf:
    """The stage's rewrite UDF on a local session, one task per core, into a no-op sink."""

    def __init__(self, spec: Any, cfg: Any, rows: list[tuple[str, str, str, list[str]]], partitions: int, folder: str):
        from realsyn.config_sections import SparkConfig
        from realsyn.spark import get_spark

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        self.spec, self.cfg, self.partitions = spec, cfg, partitions
        self.spark = get_spark(
            SparkConfig(
                master=f"local[{partitions}]",
                app_name="bench-generate",
                conf={"spark.ui.enabled": "false", "spark.driver.memory": "2g", "spark.python.worker.reuse": "true"},
            )
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        schema = "image_id string, retrieved_text string, caption string, tags array<string>"
        self.spark.createDataFrame(rows, schema).repartition(partitions).write.mode("overwrite").parquet(folder)
        self.df = self.spark.read.parquet(folder)

    def _run(self, df: Any) -> tuple[float, int]:
        from pyspark.sql import functions as F

        from realsyn.spark import ARROW_BATCH_CONF
        from realsyn.synthetic_frames import rewrite_frame

        self.spark.conf.set(ARROW_BATCH_CONF, str(self.cfg.arrow_batch_size))
        out = rewrite_frame(df, self.cfg, self.spec)
        start = time.perf_counter()
        row = out.agg(F.sum("n_tokens").alias("tokens")).first()
        return time.perf_counter() - start, int(row["tokens"] if row is not None else 0)

    def warm_up(self) -> float:
        """Start the Python workers, load the model in each and run one batch there (seconds)."""
        n = self.partitions
        start = time.perf_counter()
        self._run(self.df.limit(n * self.cfg.llm_batch_size).repartition(n))
        return time.perf_counter() - start

    def run(self) -> float:
        """Generated tokens per second (after an untimed warm-up)."""
        self.warm_up()
        seconds, tokens = self._run(self.df)
        return tokens / seconds


def main(argv: list[str] | None = None) -> None:
    """Run both sides and print the ratios; the last line is ``generate_udf_vs_bare: <median ratio>``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run (a few minutes on 2 busy cores)")
    parser.add_argument("--model", default="tiny-random-llm", help="llm entry of conf/models.yaml")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=os.cpu_count() or 2, help="Spark tasks (one per core)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2 quick, 3 full)")
    args = parser.parse_args(argv)
    n = args.prompts or (48 if args.quick else 256)
    new_tokens = args.new_tokens or (24 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 3)

    from realsyn.config_sections import GenerateConfig
    from udfs.llm import PromptTemplate
    from udfs.models import get_spec, load_registry

    registry = Path(__file__).resolve().parents[1] / "conf" / "models.yaml"
    spec = get_spec(load_registry(registry), args.model, kind="llm")
    cfg = GenerateConfig(
        llm=args.model,
        device="cpu",
        llm_batch_size=args.batch_size,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        reject_truncated=False,
        arrow_batch_size=max(args.batch_size, n // args.partitions),
    )
    rows = inputs(n)
    template = PromptTemplate(cfg.prompt_version, cfg.system_prompt, cfg.user_prompt)
    chats = [template.messages(r, c, t) for _, r, c, t in rows]
    # The stage renders in length order; so does the bare loop, so that both pad the same batches.
    bare = Bare(spec, args.batch_size)
    lengths = [len(bare.llm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in map(bare_render(bare), chats)]
    by_length = [chats[i] for i in sorted(range(n), key=lambda i: (-lengths[i], i))]
    print(f"model {spec.name} ({'random weights: texts meaningless' if spec.random_init else spec.source})")
    print(
        f"inputs: {n} prompts of {min(lengths)}-{max(lengths)} tokens, {new_tokens} new tokens each, batch "
        f"{args.batch_size}, {args.partitions} Spark tasks, {os.cpu_count()} cores"
    )
    threads = sorted({1, os.cpu_count() or 1})
    for t in threads:
        bare.run(by_length[: args.batch_size], new_tokens, t)  # untimed warm-up
    results = []
    with tempfile.TemporaryDirectory() as folder:
        udf = Udf(spec, cfg, rows, args.partitions, f"{folder}/prompts")
        warm = udf.warm_up()
        for _ in range(rounds):
            b = max(bare.run(by_length, new_tokens, t) for t in threads)
            results.append((b, udf.run()))
        udf.spark.stop()
    print(f"{'round':<8}{'bare tok/s':>12}{'UDF tok/s':>12}{'ratio':>8}")
    for i, (b, u) in enumerate(results):
        print(f"{i:<8}{b:>12.1f}{u:>12.1f}{u / b:>8.2f}")
    print(f"Spark warm-up (workers start, import torch/transformers, build the model): {warm:.1f} s, not in the rates")
    print(f"generate_udf_vs_bare: {float(np.median([u / b for b, u in results])):.2f}")


def bare_render(bare: Bare) -> Any:
    """The chat -> prompt text function of the bare side's tokenizer."""
    from udfs.llm import render

    return lambda chat: render(bare.llm.tokenizer, chat)


if __name__ == "__main__":
    main()
