#!/usr/bin/env bash
# Download MS-COCO 2014 images and Karpathy's split file, check them, and lay
# them out the way train.py --dataset karpathy reads them:
#
#   DEST/train2014/COCO_train2014_*.jpg   (82,783 photos)
#   DEST/val2014/COCO_val2014_*.jpg       (40,504 photos)
#   DEST/dataset_coco.json                (Karpathy split: 113,287 train+restval, 5,000 val, 5,000 test)
#
# Usage: scripts/get_coco.sh [DEST]    (default: data/coco; needs ~40 GB free, curl, unzip, md5sum, python3)
# Then:  python train.py --dataset karpathy --annotations DEST/dataset_coco.json --image-root DEST ...
# Re-running skips what is already downloaded and checked.
set -euo pipefail

DEST=${1:-data/coco}
mkdir -p "$DEST/zips"
cd "$DEST"

fetch() {  # url file md5 (md5 "-" when the publisher gives none)
  local url=$1 file=zips/$2 md5=$3
  if [ ! -f "$file.ok" ]; then
    curl -fL --retry 5 -C - -o "$file" "$url"
    if [ "$md5" != "-" ]; then
      echo "$md5  $file" | md5sum -c - || { echo "error: $file is corrupt; delete it and run again" >&2; exit 1; }
    fi
    touch "$file.ok"
  fi
}

# Checksums as published alongside the COCO 2014 release (and used by LAVIS, torchvision-style loaders).
fetch http://images.cocodataset.org/zips/train2014.zip train2014.zip 0da8c0bd3d6becc4dcb32757491aca88
fetch http://images.cocodataset.org/zips/val2014.zip val2014.zip a3d79f5ed8d289b7a7554ce06a5782b3
fetch https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip caption_datasets.zip -

[ -d train2014 ] || unzip -q zips/train2014.zip
[ -d val2014 ] || unzip -q zips/val2014.zip
[ -f dataset_coco.json ] || unzip -q -j zips/caption_datasets.zip dataset_coco.json

# Karpathy's file has no published checksum: check what it holds instead.
python3 - <<'PY'
import collections, json, os, sys
images = json.load(open("dataset_coco.json"))["images"]
splits = collections.Counter(im["split"] for im in images)
want = {"train": 82783, "restval": 30504, "val": 5000, "test": 5000}
missing = [im["filename"] for im in images if not os.path.isfile(os.path.join(im["filepath"], im["filename"]))]
counts = {d: len(os.listdir(d)) for d in ("train2014", "val2014")}
print(f"dataset_coco.json: {dict(splits)}; images on disk: {counts}; missing: {len(missing)}")
if dict(splits) != want or missing or counts != {"train2014": 82783, "val2014": 40504}:
    sys.exit(f"error: expected splits {want} and 82,783 + 40,504 photos (first missing: {missing[:1]})")
PY
echo "COCO 2014 with Karpathy's split is ready in $(pwd)"
