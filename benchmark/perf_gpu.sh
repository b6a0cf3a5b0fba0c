#!/usr/bin/env bash
# The paper-scale performance run of issue 9 on one GPU (docs/perf.md): 25 x 320 x 512, batch 1,
# bf16, full U-Net and LoRA, every switch flipped in turn, generation and full evaluation timed.
# Each phase is its own process under its own time limit, merged into one result file, so a phase
# that fails or runs out of time leaves the others' figures.
#
#   bash benchmark/perf_gpu.sh                 # writes results/perf/<device>.json/.md and logs
#   OUT_DIR=/somewhere PERF_MODEL="model=tiny data.clip_len=4" EVAL_WEIGHTS=tiny bash benchmark/perf_gpu.sh
#   PHASES="steps-tuned evaluation" bash benchmark/perf_gpu.sh   # some phases (all take ~14 min on an H200)
set -u -f   # -f: no globbing, overrides such as train.compile=[dino] pass as written
OUT_DIR=${OUT_DIR:-results/perf}
PY=${PYTHON:-python3}
PERF_MODEL=${PERF_MODEL:-"model=full-random data.height=320 data.width=512 data.clip_len=25"}
SWITCHES=${SWITCHES:-"train.mixed_precision=bf16 train.grad_checkpointing=true loss.decode_checkpoint=true loss.decode_chunk=5 train.adam_fused=true"}
COMMON="$PERF_MODEL $SWITCHES train.out_dir=${TMPDIR:-/tmp}/lsa-perf-run"
PHASES=${PHASES:-"steps-unet steps-lora steps-tuned generation evaluation"}   # a subset fits a shorter lease
mkdir -p "$OUT_DIR"
want() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

phase() {   # phase NAME SECONDS ARGS...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s)"
    timeout --signal=INT --kill-after=15 "$limit" $PY -m benchmark.perf --merge --out-dir "$OUT_DIR" "$@" $COMMON \
        >"$OUT_DIR/log-$name.txt" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n 25 "$OUT_DIR/log-$name.txt"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$OUT_DIR/nvidia-smi.txt"
want steps-unet && phase steps-unet "${T_UNET:-300}" --only steps --adapters unet --steps "${STEPS:-5}" --sweep --sweep-steps "${SWEEP_STEPS:-3}"
want steps-lora && phase steps-lora "${T_LORA:-75}" --only steps --adapters lora --steps "${STEPS:-5}"
# the paper profile's setting: the above with the decoder and DINOv2 compiled (compilation in the
# warm-up step), then from there the every-k-th-frame approximation and the layout switches;
# TUNED= skips the phase, TUNED_LABEL names its row "unet (<label>)"
TUNED=${TUNED-"train.compile=[vae_decoder,dino]"}
TUNED_SWEEP=${TUNED_SWEEP:-"loss.decode_frames,train.cudnn_benchmark,loss.decode_channels_last"}
[ -n "$TUNED" ] && want steps-tuned && phase steps-tuned "${T_TUNED:-330}" --only steps --adapters unet \
    --label "${TUNED_LABEL:-compiled}" --steps "${STEPS:-5}" --sweep --sweep-only "$TUNED_SWEEP" \
    --sweep-steps "${SWEEP_STEPS:-3}" $TUNED
[ "${GEN_VIDEOS:-2}" -gt 0 ] && want generation && phase generation "${T_GEN:-100}" --only generation --gen-videos "${GEN_VIDEOS:-2}"
[ "${EVAL_VIDEOS:-20}" -gt 0 ] && want evaluation && phase evaluation "${T_EVAL:-150}" --only evaluation --eval-videos "${EVAL_VIDEOS:-20}" \
    --eval-weights "${EVAL_WEIGHTS:-full-random}"
ls -l "$OUT_DIR"
