#!/usr/bin/env bash
# Submit one realsyn job, locally or to a cluster, with the code packaged and Delta added.
#
#   ./spark-submit.sh <job> [job options: --conf conf/x.yaml --set k=v ...] [-- spark-submit options]
#
#   ./spark-submit.sh ingest --conf conf/local.yaml
#   ./spark-submit.sh ingest --conf conf/emr.yaml -- --master yarn --deploy-mode client
#
# <job> is a file jobs/<job>.py. The code is built into a wheel, which is also a zip that --py-files takes.
# Delta's jars are added with --packages unless REALSYN_DELTA_PACKAGES=0 (clusters that ship Delta, such as
# Databricks or EMR with Delta enabled); a --packages among the spark-submit options gets Delta appended. The model
# registry conf/models.yaml and conf/cluster.yaml, the base file of conf/emr.yaml and conf/databricks.yaml, go with
# --files (appended to a --files given): in cluster deploy mode ship the config too (-- --files conf/emr.yaml) and
# pass --conf emr.yaml. SPARK_SUBMIT picks the spark-submit binary (default: the one on PATH, else the project
# virtualenv's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
job="$1"; shift
script="$here/jobs/$job.py"
[[ -f "$script" ]] || { echo "spark-submit.sh: no job named '$job' (no $script)" >&2; exit 2; }

job_args=(); spark_args=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; spark_args=("$@"); break; fi
  job_args+=("$1"); shift
done

python="${PYTHON:-$here/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
if [[ -x "$here/.venv/bin/python" ]]; then
  export PATH="$here/.venv/bin:$PATH"  # the virtualenv's pyspark provides spark-submit and its Python
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$here/.venv/bin/python}"
fi
submit="${SPARK_SUBMIT:-spark-submit}"

# Package the code: a pure-Python wheel is a zip with the packages at its root.
dist="$here/dist"
rm -rf "$dist" && mkdir -p "$dist"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$dist" "$here" >&2
wheel="$(ls "$dist"/realsyn-*.whl)"
cp "$wheel" "$dist/realsyn.zip"

delta_version="${DELTA_VERSION:-4.0.1}"
extra=()
if [[ "${REALSYN_DELTA_PACKAGES:-1}" != "0" ]]; then
  packages="io.delta:delta-spark_2.13:${delta_version}"
  for i in "${!spark_args[@]}"; do  # a caller's --packages (e.g. hadoop-aws) gets Delta appended
    if [[ "${spark_args[$i]}" == "--packages" ]]; then spark_args[i + 1]="${spark_args[i + 1]},$packages"; packages=""; fi
  done
  [[ -z "$packages" ]] || extra+=(--packages "$packages")
fi
# The model registry travels with the application: the driver may run in another folder (or, in cluster deploy
# mode, on another node) and imports the code from the zip, which holds no conf/. So does the base file of the
# cluster configs, which a config shipped with --files names as a file beside it (the driver's working directory).
files="$here/conf/models.yaml,$here/conf/cluster.yaml"
for i in "${!spark_args[@]}"; do  # a caller's --files gets the registry and the base appended
  if [[ "${spark_args[$i]}" == "--files" ]]; then spark_args[i + 1]="${spark_args[i + 1]},$files"; files=""; fi
done
[[ -z "$files" ]] || extra+=(--files "$files")

exec "$submit" \
  --name "realsyn-$job" \
  --py-files "$dist/realsyn.zip" \
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
  ${extra[@]+"${extra[@]}"} \
  ${spark_args[@]+"${spark_args[@]}"} \
  "$script" ${job_args[@]+"${job_args[@]}"}
