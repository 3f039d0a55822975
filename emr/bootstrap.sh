#!/usr/bin/env bash
# EMR bootstrap action (every node): a Python with realsyn's dependencies for the driver and the Python workers,
# and the job files on the local disk for the steps of emr/steps.json.
#
#   aws emr create-cluster ... --bootstrap-actions Path=s3://my-bucket/realsyn/bootstrap.sh,Args=[s3://my-bucket/realsyn]
#
# Argument: the S3 prefix that holds the wheel (realsyn-*.whl), realsyn.zip, jobs/ and conf/ (see the README): the
# steps read conf/emr.yaml, its base file conf/cluster.yaml beside it and the registry conf/models.yaml.
# realsyn needs Python >= 3.10 and the cluster's Spark to be the version pyproject pins (4.0); emr/configurations.json
# points PYSPARK_PYTHON at the interpreter installed here.
set -euo pipefail
prefix="${1:?usage: bootstrap.sh s3://bucket/prefix}"
home=/home/hadoop/realsyn

sudo dnf install -y python3.11 python3.11-pip
mkdir -p "$home"
aws s3 cp --recursive "$prefix" "$home" --exclude "*" --include "*.whl" --include "realsyn.zip" \
  --include "jobs/*" --include "conf/*"
# The cluster's own pyspark (on PYTHONPATH under spark-submit) is the one used; the copy pip installs as a
# dependency is never imported by the steps. The s3 extra lets the fetch stage read s3:// image references.
sudo /usr/bin/python3.11 -m pip install "$(ls "$home"/realsyn-*.whl)[s3]"
