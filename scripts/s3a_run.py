"""Delta tables on an S3 API: the pipeline job with ``storage.root: s3a://<bucket>/realsyn``, read back with delta-rs.

An S3 API runs on loopback (moto's server, in this process). ``./spark-submit.sh pipeline`` writes every table of the
demo pipeline through Hadoop's s3a filesystem: hadoop-aws of the Hadoop version inside pyspark, resolved from Maven
Central with ``--packages`` together with the AWS SDK v2 bundle it depends on (~600 MB on first use, then in the
Ivy cache), and the endpoint, path-style access and credentials as ``spark.hadoop.fs.s3a.*`` settings. Delta's
log on s3a goes through its default ``S3SingleDriverLogStore``: correct for one writing driver per table at a
time (see the README for concurrent writers). Afterwards delta-rs (the ``deltalake`` package) opens every table
it finds in the bucket through the same endpoint (``storage_options``) and the script checks that it holds the
rows the job reports, printing rows per table.

The same corpus is then run with ``storage.root`` on the local disk (``--compare``, on by default), and every
table read by delta-rs from S3 must equal its local twin (floats within 1e-5: see
tests/support/standalone.py for why). This is a script, not a test, because the AWS SDK bundle alone is a
~600 MB download on a clean machine. Usage: ``python scripts/s3a_run.py [--documents 12] [--no-compare]``; the
last line is ``s3a_tables_equal: <n>/<n>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyspark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.standalone import SPARK_CONF, VOLATILE, assert_same_rows  # noqa: E402

BUCKET = "realsyn-demo"
KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def hadoop_version() -> str:
    """The Hadoop version of pyspark's own jars (hadoop-aws must match it exactly)."""
    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not jars:
        raise SystemExit("no hadoop-client-api jar inside pyspark: cannot tell which hadoop-aws to use")
    return jars[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def s3a_conf(endpoint: str) -> dict[str, str]:
    """spark.hadoop.fs.s3a.* settings for an S3 API at ``endpoint`` (plain HTTP, path-style, static keys)."""
    return {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": REGION,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.access.key": KEY,
        "spark.hadoop.fs.s3a.secret.key": SECRET,
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        # Delta's default for s3a, spelled out: one writing driver per table at a time.
        "spark.delta.logStore.s3a.impl": "io.delta.storage.S3SingleDriverLogStore",
    }


def submit(root: str, raw: Path, documents: int, cwd: Path, extra: list[str], env_extra: dict[str, str]) -> float:
    """Run ``./spark-submit.sh pipeline`` on local[2] with ``storage.root=root`` and ``env_extra`` in its
    environment; return its wall time."""
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [str(REPO / "spark-submit.sh"), "pipeline", "--conf", str(REPO / "conf" / "local.yaml")]
    # The report page links its images as local files: it is written beside the run, whatever storage.root is.
    sets = (
        f"storage.root={root}",
        f"demo.output={raw}",
        f"demo.documents={documents}",
        f"report.output={cwd / 'report'}",
    )
    for item in sets:
        argv += ["--set", item]
    argv += ["--set", "demo.kind=photos", "--set", "demo.synthetic_images=4", "--", "--master", "local[2]", *extra]
    for key, value in SPARK_CONF.items():
        argv += ["--conf", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYSPARK_PYTHON"}}
    env.update(PYTHON=sys.executable, **env_extra)
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    (cwd / "stdout.log").write_text(result.stdout)
    (cwd / "stderr.log").write_text(result.stderr)
    if result.returncode != 0:
        raise SystemExit(
            f"spark-submit failed ({result.returncode}); end of its console:\n{result.stdout[-3000:]}\n"
            f"end of stderr:\n{result.stderr[-3000:]}"
        )
    return seconds


def main() -> None:
    """Run the pipeline on s3a:// (and locally), read back with delta-rs, compare, print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="skip the local twin run")
    args = parser.parse_args()

    import boto3
    from deltalake import DeltaTable
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server would log every request of the job
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
        )
        s3.create_bucket(Bucket=BUCKET)
        packages = f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
        extra = ["--packages", packages]
        for key, value in s3a_conf(endpoint).items():
            extra += ["--conf", f"{key}={value}"]

        with tempfile.TemporaryDirectory(prefix="realsyn-s3a-") as tmp:
            work = Path(tmp)
            raw = work / "raw"
            root = f"s3a://{BUCKET}/realsyn"
            # The stages that write files from Python (the WebDataset shards) reach the bucket through fsspec's
            # s3fs, which finds its endpoint and credentials where boto does: here, the environment.
            aws_env = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": REGION,
            }
            s3a_seconds = submit(root, raw, args.documents, work / "s3a", extra, aws_env)
            print(f"pipeline on {root} with {packages}: {s3a_seconds:.0f} s (first run includes the jar download)")

            options = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": REGION,
                "AWS_ALLOW_HTTP": "true",
            }
            keys = [
                o["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])
            ]
            names = sorted({k.split("/_delta_log/")[0].removeprefix("realsyn/") for k in keys if "/_delta_log/" in k})
            if "realsyn/_pipeline.lock" in keys:  # held on s3 while the run lasted (realsyn.lock), then released
                raise SystemExit("the pipeline's lock object is still in the bucket after the run")
            on_s3 = {}
            for name in names:
                rows = DeltaTable(f"{root}/{name}", storage_options=options).to_pyarrow_table().to_pylist()
                on_s3[name] = rows
                print(f"  {name:40s} {len(rows):6d} rows (delta-rs over {endpoint})")
            documents = len(on_s3.get("bronze/documents", []))
            if documents != args.documents:
                raise SystemExit(f"bronze/documents holds {documents} rows, expected {args.documents}")

            equal = 0
            if args.compare:
                local_seconds = submit(str(work / "local" / "lake"), raw, args.documents, work / "local", [], {})
                print(f"the same job on the local disk: {local_seconds:.0f} s")
                local = {}
                lake = work / "local" / "lake"
                for log in sorted(
                    lake.rglob("_delta_log")
                ):  # the layers' tables and the exports' (exports/<scale>/delta)
                    name = log.parent.relative_to(lake).as_posix()
                    local[name] = DeltaTable(str(log.parent)).to_pyarrow_table().to_pylist()
                if sorted(local) != names:
                    raise SystemExit(f"tables differ: on s3a {names}, on disk {sorted(local)}")
                for name in names:
                    # The two runs' configs differ by storage.root and report.output, so do their hashes.
                    drop = VOLATILE.get(name, set()) | ({"config_hash"} if name == "gold/runs" else set())
                    got = [{k: v for k, v in r.items() if k not in drop} for r in on_s3[name]]
                    want = [{k: v for k, v in r.items() if k not in drop} for r in local[name]]
                    assert_same_rows(name, got, want)
                    equal += 1
            print(f"s3a_tables_equal: {equal}/{len(names)}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
