#!/usr/bin/env bash
# The checks that need a CUDA device, in one run on a GPU machine: the GPU tests (embedding, vLLM, the k-means
# and retrieval device paths) and the GPU benchmarks, each with its own time limit, each log kept. What is missing
# on the machine (Spark, vLLM, faiss, ...) makes a check fail with its log saying so; the others still run.
#
#   OUT=/tmp/gpu-check bash scripts/gpu_check.sh                    # all checks: at most 555 s by their limits
#   OUT=/tmp/gpu-check bash scripts/gpu_check.sh kmeans_device generate_gpu    # only these
#
# Each check's last log line (a benchmark's key figure is its last line) is collected in $OUT/summary.txt.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"

wanted=" $* "
check() {  # check NAME SECONDS COMMAND...: run, keep the log, note the exit status and the last line
    local name=$1 limit=$2
    shift 2
    if [ "$wanted" != "  " ] && [[ $wanted != *" $name "* ]]; then
        return
    fi
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$out/$name.log")" | tee -a "$summary"
}

{ nvidia-smi || true; "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } \
    > "$out/machine.txt" 2>&1
head -n 20 "$out/machine.txt"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
check tests_gpu 150 "$py" -m pytest -q -p no:cacheprovider --noconftest -m gpu tests/udfs/test_clip.py tests/udfs/test_llm.py tests/udfs/test_vlm.py
check tests_kmeans 45 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/udfs/test_kmeans.py
check kmeans_device 60 "$py" bench/kmeans_device.py
check retrieval_device 45 "$py" bench/retrieval_device.py --quick
check embed_gpu 105 "$py" bench/embed_gpu.py --quick
check generate_gpu 150 "$py" bench/generate_gpu.py --quick
