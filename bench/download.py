"""Download throughput: the fetch job vs img2dataset vs a plain aiohttp loop, side by side, on loopback.

A loopback HTTP server (its own process, aiohttp) serves real photographs (scikit-image and scikit-learn sample
images, cropped and scaled into distinct web-sized JPEGs) at N distinct URLs (``--server http.server``: the same
files from ``python -m http.server``, a slower server that takes more of the cores). The same URLs are fetched by:

- realsyn: ``run_fetch`` on local Spark (bronze.image_refs -> bronze.fetched_images, Delta MERGE), with
  every check on (resolved-address check, size limit, Pillow decode of every image), timed twice: in a running
  Spark session that has already run a 200-URL fetch job (as a job on a long-running cluster sees it: session
  start-up and JVM warm-up excluded) and as the job's entry point ``jobs/fetch.py`` in a process of its
  own (Python, JVM and Spark session start-up included);
- udfs.fetch: the fetcher alone, in this one process (no Spark, no Delta), same checks;
- img2dataset: installed by this script in its own virtualenv (``--i2d-venv``) from PyPI, run with
  ``--disable_all_reencoding True`` to a WebDataset output;
- plain aiohttp: one process, one event loop, GET and read the body, nothing else.

Images per second are wall-clock, from start to the last byte written. The machine's pace drifts by 10-20% over
minutes, so every downloader runs once per round (``--rounds``, default 3), one after another, and each round gives
its own ratios; the last two lines are the medians of the warm-session ratios over the rounds (the own-process run
happens once, after the rounds). Usage: ``python bench/download.py --quick`` (2,000 URLs) or ``python
bench/download.py --urls 50000``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

N_VARIANTS = 96


def photographs() -> list[Image.Image]:
    """Real photographs that ship with scikit-image and scikit-learn."""
    import skimage
    from sklearn.datasets import load_sample_image

    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
    photos = [Image.open(folder / n).convert("RGB") for n in names if (folder / n).exists()]
    photos += [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    return photos


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs (random crops of the photographs, longest side 256-640 px, quality 85)."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        scale = rng.uniform(256, 640) / max(cw, ch)
        crop = crop.resize((max(1, int(cw * scale)), max(1, int(ch * scale))))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def serve(bodies: list[bytes], port_out: mp.connection.Connection) -> None:
    """Serve ``/img/<i>.jpg`` -> ``bodies[i % len(bodies)]`` on 127.0.0.1 until killed."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        return web.Response(body=bodies[i % len(bodies)], content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{i}.jpg", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_stdlib(bodies: list[bytes], n: int, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Serve ``/img/<i>.jpg`` (``i < n``) with ``python -m http.server`` from ``folder``; (process, port).

    The files are hard links to one copy of each body; the server ignores query strings, as aiohttp's does.
    """
    import socket

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "img").mkdir(parents=True)
    originals = []
    for j, body in enumerate(bodies):
        originals.append(folder / f"body{j}.jpg")
        originals[-1].write_bytes(body)
    for i in range(n):
        os.link(originals[i % len(originals)], folder / "img" / f"{i}.jpg")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("python -m http.server did not start")


def plain_aiohttp(urls: list[str], concurrency: int) -> tuple[int, int]:
    """GET every URL and read its body in one event loop; return (ok count, bytes)."""
    import aiohttp

    async def run() -> tuple[int, int]:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def one(url: str) -> int:
                async with sem, session.get(url) as resp:
                    body = await resp.read()
                    return len(body) if resp.status == 200 else -1

            sizes = await asyncio.gather(*(one(u) for u in urls))
        return sum(1 for s in sizes if s >= 0), sum(s for s in sizes if s > 0)

    return asyncio.run(run())


def ensure_img2dataset(venv: Path) -> Path | str:
    """The img2dataset executable of ``venv`` (created and installed from PyPI when missing), or why not."""
    exe = venv / "bin" / "img2dataset"
    if exe.exists():
        return exe
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "img2dataset"], check=True, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as e:
        return f"cannot install img2dataset: {' '.join(map(str, e.cmd))} failed:\n{(e.stderr or '')[-2000:]}"
    return exe if exe.exists() else "img2dataset installed but its executable is missing"


def run_img2dataset(exe: Path, urls: list[str], work: Path, processes: int, threads: int) -> tuple[float, int]:
    """Run img2dataset on ``urls``; return (seconds, images written)."""
    url_file = work / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n", encoding="utf-8")
    out = work / "i2d"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(exe),
        "--url_list",
        str(url_file),
        "--output_folder",
        str(out),
        "--output_format",
        "webdataset",
        "--disable_all_reencoding",
        "True",
        "--processes_count",
        str(processes),
        "--thread_count",
        str(threads),
        "--number_sample_per_shard",
        str(max(1, len(urls) // processes)),
        "--timeout",
        "10",
        "--retries",
        "0",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    import json

    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return seconds, ok


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by this process's live descendants, by kind (Linux ``/proc``; empty elsewhere).

    Kinds: the JVM of the Spark session, its Python workers, the loopback server, and anything else.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, command line, CPU seconds)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        procs[int(entry.name)] = (int(stat[1]), cmdline, (int(stat[11]) + int(stat[12])) / tick)
    out: dict[str, float] = {}
    for pid, (_, cmdline, cpu) in procs.items():
        ancestor = pid
        while ancestor in procs and ancestor != os.getpid():
            ancestor = procs[ancestor][0]
        if ancestor != os.getpid() or pid == os.getpid():
            continue
        if pid == server_pid:
            kind = "loopback server"
        elif "java" in cmdline.split(" ", 1)[0]:
            kind = "JVM"
        elif "pyspark" in cmdline:
            kind = "Python workers"
        else:
            kind = "other"
        out[kind] = out.get(kind, 0.0) + cpu
    return out


def job_config(root: Path, concurrency: int, tasks: int) -> dict[str, object]:
    """The configuration of the fetch job (as YAML would give it): local Spark, loopback allowed."""
    return {
        "storage": {"root": str(root)},
        "spark": {
            "master": f"local[{tasks}]",
            "app_name": "bench-download",
            "conf": {
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": str(tasks),
                "spark.default.parallelism": str(tasks),
                "spark.driver.memory": "4g",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.databricks.delta.snapshotPartitions": "2",  # a small Delta log: 50 tasks are overhead
            },
        },
        "fetch": {
            "allow_networks": ["127.0.0.0/8"],  # the loopback server; refused by default
            "concurrency": concurrency,
            "per_host": concurrency,  # one host serves every URL here
            "tasks": tasks,
        },
    }


def write_refs(cfg: dict[str, object], urls: list[str]) -> None:
    """Write ``urls`` to bronze.image_refs of a fresh lakehouse (four images per document)."""
    from realsyn.config_sections import Config
    from realsyn.contracts import BRONZE_IMAGE_REFS
    from realsyn.ids import stable_id
    from realsyn.spark import get_spark
    from realsyn.tables import Lakehouse

    config = Config.model_validate(cfg)
    assert config.storage.root is not None
    shutil.rmtree(config.storage.root, ignore_errors=True)
    spark = get_spark(config.spark)
    spark.sparkContext.setLogLevel("ERROR")
    lakehouse = Lakehouse(spark, config.storage)
    rows = [(f"doc{i // 4}", i % 4, u, stable_id(u), None, None, None, None) for i, u in enumerate(urls)]
    lakehouse.insert_new(BRONZE_IMAGE_REFS, spark.createDataFrame(rows, BRONZE_IMAGE_REFS.schema))


def run_realsyn(
    cfg: dict[str, object], urls: list[str], server_pid: int = 0
) -> tuple[float, dict[str, int], float, dict[str, float]]:
    """Write the URLs to bronze.image_refs, then time run_fetch in this (warm) session.

    Returns (seconds, statuses, MB, CPU seconds of the run by kind of process, see :func:`cpu_seconds`).
    """
    from realsyn.config_sections import Config
    from realsyn.spark import get_spark
    from realsyn.stages.fetch import run_fetch
    from realsyn.tables import Lakehouse

    write_refs(cfg, urls)
    config = Config.model_validate(cfg)
    lakehouse = Lakehouse(get_spark(config.spark), config.storage)
    cpu_before, own_before = cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    summary = run_fetch(lakehouse, config)
    seconds = time.perf_counter() - started
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(server_pid).items()}
    cpu["driver"] = time.process_time() - own_before
    return seconds, summary.by_status, summary.bytes / 1e6, cpu


def run_realsyn_cold(cfg: dict[str, object], urls: list[str], work: Path) -> tuple[float, int]:
    """Write the URLs to bronze.image_refs, then time the job's entry point in a new process; (seconds, ok)."""
    import yaml

    write_refs(cfg, urls)
    conf = work / "fetch-job.yaml"
    conf.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    cmd = [sys.executable, "-m", "jobs.fetch", "--conf", str(conf)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"fetch job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # "fetch: N of N pending URLs ... : ok N, ..."
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("fetch:"))
    found = re.search(r"\bok ([\d,]+)", summary.rpartition(":")[2])
    return seconds, int(found.group(1).replace(",", "")) if found else 0


PLAIN = "plain aiohttp loop (1 process)"
ALONE = "udfs.fetch alone (1 process, checks on)"
I2D = "img2dataset (2 processes)"


def print_rates(results: dict[str, tuple[float, int]]) -> dict[str, float]:
    """Print seconds, images and images/s per downloader; return images/s."""
    print(f"{'downloader':<48}{'seconds':>9}{'ok':>8}{'images/s':>10}")
    rate = {}
    for name, (secs, ok) in results.items():
        rate[name] = ok / secs
        print(f"{name:<48}{secs:>9.2f}{ok:>8,}{rate[name]:>10,.0f}")
    return rate


def main() -> None:
    """Run the four downloaders on the same URLs, round after round, and print images/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 URLs")
    parser.add_argument("--urls", type=int, default=10_000, help="number of distinct URLs (ignored with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every downloader; ratios are medians")
    parser.add_argument(
        "--server",
        choices=["aiohttp", "http.server"],
        default="aiohttp",
        help="the loopback server: aiohttp (fast: the downloaders are measured) or python -m http.server",
    )
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight, per process / task")
    parser.add_argument("--tasks", type=int, default=2, help="Spark tasks (cores) of the fetch job")
    parser.add_argument("--i2d-venv", type=Path, default=Path(tempfile.gettempdir()) / "realsyn-bench-img2dataset")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "realsyn-bench-download")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("realsyn.stages.fetch").setLevel(logging.INFO)  # the job's progress lines
    n = 2_000 if args.quick else args.urls
    args.work.mkdir(parents=True, exist_ok=True)

    bodies = web_jpegs(N_VARIANTS)
    print(f"{n:,} URLs over {N_VARIANTS} distinct photographs, mean {np.mean([len(b) for b in bodies]) / 1e3:.0f} kB")
    server: mp.process.BaseProcess | subprocess.Popen[bytes]
    if args.server == "http.server":
        server, port = serve_stdlib(bodies, n, args.work / "www")
    else:
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        server = ctx.Process(target=serve, args=(bodies, send), daemon=True)
        server.start()
        port = recv.recv()
    i2d = ensure_img2dataset(args.i2d_venv)
    if not isinstance(i2d, Path):
        print(f"img2dataset not measured: {i2d}")
    warm = f"realsyn fetch job, warm session (local[{args.tasks}])"
    cold = f"realsyn fetch job, own process (local[{args.tasks}])"
    vs_plain: list[float] = []
    vs_i2d: list[float] = []
    i2d_rates: list[float] = []
    try:

        def urls_for(tag: str) -> list[str]:  # fresh query strings: no run profits from another's caches
            return [f"http://127.0.0.1:{port}/img/{i}.jpg?{tag}" for i in range(n)]

        from udfs.fetch import OK, fetch_batch
        from udfs.fetch_schema import FetchOptions

        opts = FetchOptions(allow_networks=("127.0.0.0/8",), concurrency=args.concurrency, per_host=args.concurrency)
        # Untimed: a session on a long-running cluster has run jobs before, so its JVM has compiled the MERGE path.
        run_realsyn(
            job_config(args.work / "lakehouse-warm-up", args.concurrency, args.tasks), urls_for("warm-up")[:200]
        )
        for r in range(1, args.rounds + 1):
            # Every downloader once per round, one after another: a ratio compares runs a few minutes apart at most.
            results: dict[str, tuple[float, int]] = {}
            started = time.perf_counter()
            ok, _ = plain_aiohttp(urls_for(f"plain{r}"), args.concurrency)
            results[PLAIN] = (time.perf_counter() - started, ok)

            started = time.perf_counter()
            fetched = fetch_batch(urls_for(f"udfs{r}"), opts)
            results[ALONE] = (time.perf_counter() - started, sum(x.status == OK for x in fetched))
            del fetched

            if isinstance(i2d, Path):
                results[I2D] = run_img2dataset(i2d, urls_for(f"i2d{r}"), args.work, args.tasks, args.concurrency)

            cfg = job_config(args.work / "lakehouse", args.concurrency, args.tasks)
            seconds, statuses, mb, cpu = run_realsyn(cfg, urls_for(f"realsyn{r}"), server.pid or 0)
            results[warm] = (seconds, statuses.get("ok", 0))

            print(f"\nround {r} of {args.rounds}")
            rate = print_rates(results)
            vs_plain.append(rate[warm] / rate[PLAIN])
            if I2D in rate:
                i2d_rates.append(rate[I2D])
                vs_i2d.append(rate[warm] / rate[I2D])
            print(f"fetch job statuses: {statuses}; {mb:,.1f} MB")
            per_image = 1e3 / max(1, statuses.get("ok", 0))
            parts = ", ".join(
                f"{k} {v:.1f} s ({v * per_image:.2f} ms/image)" for k, v in sorted(cpu.items()) if v >= 0.05
            )
            print(f"CPU during the fetch job ({seconds:.1f} s wall): {parts}")
            i2d_ratio = f", vs img2dataset {vs_i2d[-1]:.2f}" if I2D in rate else ""
            print(f"warm session: vs plain aiohttp {vs_plain[-1]:.2f}{i2d_ratio}", flush=True)

        cfg = job_config(args.work / "lakehouse-cold", args.concurrency, args.tasks)
        seconds, ok = run_realsyn_cold(cfg, urls_for("realsyn-cold"), args.work)
    finally:
        server.kill()

    print("\nonce, after the rounds")
    rate_cold = print_rates({cold: (seconds, ok)})[cold]
    if i2d_rates:
        print(f"own process, start-up included: vs img2dataset (its median rate) {rate_cold / median(i2d_rates):.2f}")
    print(f"warm session (after a 200-URL warm-up job), start-up excluded; median of {args.rounds} round(s):")
    print(f"download_vs_plain_aiohttp: {median(vs_plain):.2f}")
    print(f"download_vs_img2dataset: {f'{median(vs_i2d):.2f}' if vs_i2d else 'n/a'}")


if __name__ == "__main__":
    main()
