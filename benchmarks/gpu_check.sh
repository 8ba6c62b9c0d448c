#!/usr/bin/env bash
# The CUDA/AMP path on a GPU machine, in a few minutes, on a slice of Flickr8k
# (the first 200 train, 50 val and 100 test photos are enough; missing ones are
# skipped with a warning). Run by hand from the repository root:
#   SHOWTELL_DATA=/path/to/data bash benchmarks/gpu_check.sh REFERENCE.json [OUT]
# REFERENCE.json: `python benchmarks/gpu_check.py --write-reference REFERENCE.json` on a CPU machine.
set -u
REF=$1
OUT=${2:-/tmp/gpu_check}
DATA=${SHOWTELL_DATA:-../shared/data}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SHOWTELL_CACHE=${SHOWTELL_CACHE:-$OUT/cache}
TRAIN=(--dataset flickr8k --data-root "$DATA/flickr8k" --decoder show_attend_tell --max-images 200
       --val-max-images 50 --select-metric bleu4 --device cuda --no-progress)
step() { echo; echo "== $1"; shift; local t=$SECONDS; "$@"; echo "== exit $? after $((SECONDS - t)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
if [ -z "${SKIP_TRAIN:-}" ]; then  # SKIP_TRAIN=1: only the captioning checks
    step "AMP training, 3 epochs on 200 photos" $PY train.py "${TRAIN[@]}" --epochs 3 --out "$OUT/amp"
    tail -n 3 "$OUT/amp/log.jsonl"
    step "the same run under torchrun (DDP, 1 process), 1 epoch" \
        $PY -m torch.distributed.run --standalone --nproc_per_node 1 train.py "${TRAIN[@]}" --epochs 1 --out "$OUT/ddp"
    tail -n 1 "$OUT/ddp/log.jsonl"
fi
step "caption() on the GPU against the CPU's captions" $PY benchmarks/gpu_check.py --reference "$REF"
step "caption benchmark on the GPU (100 test photos)" $PY benchmarks/bench_caption.py --photos 100 --repeats 20
