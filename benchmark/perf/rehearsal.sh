#!/usr/bin/env bash
# The rehearsal of Table III (rows svd_finetuned and hybrid) at full size on one GPU, in one
# 10-minute device call (docs/perf.md, "The rehearsal"): profile=rehearsal, i.e. profile=paper with
# random stand-in networks in the official formats, synthetic 25 x 320 x 512 clips, 2 optimizer
# steps per epoch (one checkpoint per epoch stage, the next epoch resumed from it) and 2 test videos.
# Writes results/perf/<device>-rehearsal.json / .md (per stage: wall time, peak allocated / reserved
# GPU memory, checkpoint size and save time, resume time, done or not) and log-rehearsal*.txt.
#
#   bash benchmark/perf/rehearsal.sh wheels   # HERE, on the CPU, once: the wheels the device image lacks -> .whl/
#   bash benchmark/perf/rehearsal.sh          # on the GPU machine (the one device command: docs/perf.md)
#
# Settings (environment): OUT_DIR (results/perf), WORK (the store and stand-ins; default: the
# writable filesystem with the most free space among the repository, $TMPDIR and /dev/shm),
# T_REHEARSAL (seconds for the whole run, 560: SIGINT, so the record is still written),
# REHEARSAL_OVERRIDES (extra key=value; default "train.compile=[]": the paper profile's compilation of
# the decoder and DINOv2 costs ~100 s that one 10-minute call does not have, and gpu.sh's steps-tuned
# phase already runs it at full size; REHEARSAL_OVERRIDES= rehearses with it, in a longer call).
#
# Disk: the stand-ins are ~5.5 GB; each train stage keeps one checkpoint (fp32 U-Net 6.1 GB + AdamW
# states 12.2 GB) and its exported U-Net (6.1 GB), ~24.4 GB per stage, 3 stages (epoch 1 is shared).
# With less than NEED_GB (85) free, the rows run one after the other (svd_finetuned, then hybrid) and
# the checkpoints of svd_finetuned's epoch-2 stage (which nothing reads later) are deleted between
# the two passes; the record says so.
set -u
OUT_DIR=${OUT_DIR:-results/perf}
PY=${PYTHON:-python3}

if [ "${1:-}" = "wheels" ]; then
    # wheels.sh's set without bitsandbytes (the rehearsal trains with 32-bit AdamW), plus the
    # evaluation and I/O packages the rehearsal imports that a bare torch image may lack
    set -e
    DEST=${DEST:-.whl}
    mkdir -p "$DEST"
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DEST" \
        diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 \
        ${REHEARSAL_WHEELS:-torch-fidelity==0.4.0 torchmetrics==1.9.0 lightning-utilities==0.15.3 pycocotools==2.0.11 imageio==2.38.2 submitit==1.5.4 cloudpickle==3.1.3}
    # published as source archives only: build their pure-Python wheels (omegaconf's parser runtime; cd-fvd's I3D)
    $PY -m pip wheel --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3 ${REHEARSAL_SDISTS:-cd-fvd==0.1.1}
    ls -l "$DEST"
    du -sh "$DEST"   # with the repository (~22 MB) it must stay under a device call's 64 MiB
    exit 0
fi

mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false YOLO_CONFIG_DIR=${YOLO_CONFIG_DIR:-${TMPDIR:-/tmp}/yolo-config}

# 1. every module the rehearsal imports, before any work (a missing one costs seconds, not minutes)
$PY - <<'EOF' || exit 3
import importlib, sys
mods = ["torch", "diffusers", "transformers", "accelerate", "peft", "hydra", "omegaconf", "safetensors", "scipy",
        "imageio", "imageio_ffmpeg", "matplotlib", "torchmetrics", "pycocotools", "torch_fidelity", "cdfvd",
        "ultralytics", "submitit", "cloudpickle", "PIL", "tqdm"]
missing = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m} ({type(e).__name__}: {str(e)[:80]})")
if missing:
    print("rehearsal: missing modules: " + "; ".join(missing) + " -- add their wheels (REHEARSAL_WHEELS=... bash benchmark/perf/rehearsal.sh wheels)", file=sys.stderr)
    sys.exit(3)
import torch
print(f"rehearsal: modules present; torch {torch.__version__}, CUDA {torch.cuda.is_available()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia-smi.txt"

# 2. where the store and the stand-ins go: the filesystem with the most free space
free_gb() { df -P -BG "$1" 2>/dev/null | awk 'NR==2 {gsub("G","",$4); print $4}'; }
if [ -z "${WORK:-}" ]; then
    best=0
    for d in "$PWD" "${TMPDIR:-/tmp}" /dev/shm; do
        [ -d "$d" ] && [ -w "$d" ] || continue
        f=$(free_gb "$d"); f=${f:-0}
        if [ "$f" -gt "$best" ]; then best=$f; WORK=$d/lsa-rehearsal; fi
    done
fi
mkdir -p "$WORK"
FREE=$(free_gb "$WORK"); FREE=${FREE:-0}
echo "rehearsal: work folder $WORK, ${FREE} GB free"; df -h "$PWD" "${TMPDIR:-/tmp}" /dev/shm 2>/dev/null
export LSA_REHEARSAL_DIR=$WORK LSA_BENCH_CACHE=$WORK/cache
STORE=$WORK/runs
set -f   # no globbing: overrides such as train.compile=[] pass as written
ARGS="table=III store=$STORE results=$OUT_DIR/rehearsal-results --out-dir $OUT_DIR ${REHEARSAL_OVERRIDES-train.compile=[]}"
LIMIT=${T_REHEARSAL:-560}
T0=$SECONDS

rehearse() {   # rehearse LOG ROWS
    local left=$((LIMIT - (SECONDS - T0)))
    [ "$left" -gt 30 ] || { echo "rehearsal: no time left for rows=$2"; return 124; }
    echo "=== rows=$2 (limit ${left}s)"
    timeout --signal=INT --kill-after=20 "$left" $PY -m benchmark.perf.rehearsal rows="$2" $ARGS >"$OUT_DIR/$1" 2>&1
    local rc=$?
    echo "=== rows=$2: exit $rc after $((SECONDS - T0)) s"
    grep -E "INFO (benchmark\.(run_table|rehearsal|perf\.rehearsal)|trainers)|checkpoint step|resumed from|error|Error" "$OUT_DIR/$1" | tail -n 40
    return $rc
}

if [ "$FREE" -ge "${NEED_GB:-85}" ]; then
    rehearse log-rehearsal.txt svd_finetuned,hybrid
else
    echo "rehearsal: ${FREE} GB free < ${NEED_GB:-85} GB: svd_finetuned first, then hybrid"
    rehearse log-rehearsal-1.txt svd_finetuned
    set +f; stem=$(ls "$OUT_DIR"/*-rehearsal.json 2>/dev/null | head -1); set -f
    [ -n "$stem" ] && cp "$stem" "${stem%.json}-pass1.json" && cp "${stem%.json}.md" "${stem%.json}-pass1.md"
    # svd_finetuned's epoch-2 train stage: nothing reads its checkpoints any more (the hybrid row
    # starts from the shared epoch-1 stage); this throwaway store's manifest of it no longer holds
    [ -n "$stem" ] && $PY - "$stem" "$STORE" <<'EOF'
import json, shutil, sys
from pathlib import Path
report, store = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
for s in report["stages"]:
    if s["kind"] == "train" and s["params"].get("epoch") == 2:
        ck = store / s["hash"] / "checkpoints"
        shutil.rmtree(ck, ignore_errors=True)
        print(f"rehearsal: deleted {ck} (svd_finetuned's last epoch) to free disk for the hybrid row")
EOF
    rehearse log-rehearsal-2.txt hybrid
fi
ls -l "$OUT_DIR"
