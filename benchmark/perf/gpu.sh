#!/usr/bin/env bash
# The paper-scale performance runs on one GPU (docs/perf.md): 25 x 320 x 512, batch 1, bf16.
# Each phase is its own process under its own time limit (SIGINT, so a phase that runs out of time
# still writes what it measured), merged into one result file results/perf/<device>.json/.md.
#
# Round two (the default, PHASES="r2-unet r2-lora": fits ONE 10-minute device call, about 8 min):
#   r2-unet  the exact LSA step and the diffusion step with the U-Net's blocks, the decoder and DINOv2
#            compiled and 8-bit AdamW states; the decoder's backward profiled (torch.profiler); then
#            one switch at a time: 32-bit AdamW states, every 5th frame decoded and a smaller DINOv2
#            input (both approximations, each with its gradient against the exact one)
#   r2-lora  LoRA r16 in the same setting
# Round one (docs/perf.md, the first figures): PHASES="steps-unet steps-lora steps-tuned generation evaluation"
# (about 14 min on an H200: two calls).
#
#   bash benchmark/perf/gpu.sh                 # writes results/perf/<device>.json/.md and logs
#   OUT_DIR=/somewhere PERF_MODEL="model=tiny data.clip_len=4" EVAL_WEIGHTS=tiny bash benchmark/perf/gpu.sh
#   PHASES="steps-tuned evaluation" bash benchmark/perf/gpu.sh   # some phases
set -u -f   # -f: no globbing, overrides such as train.compile=[dino] pass as written
OUT_DIR=${OUT_DIR:-results/perf}
PY=${PYTHON:-python3}
PERF_MODEL=${PERF_MODEL:-"model=full-random data.height=320 data.width=512 data.clip_len=25"}
SWITCHES=${SWITCHES:-"train.mixed_precision=bf16 train.grad_checkpointing=true loss.decode_checkpoint=true loss.decode_chunk=5 train.adam_fused=true"}
COMMON="$PERF_MODEL $SWITCHES train.out_dir=${TMPDIR:-/tmp}/lsa-perf-run"
PHASES=${PHASES:-"r2-unet r2-lora"}
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

# ---- round two. Time limits from round one's timings on an H200: start-up and model build ~25 s;
# compiling the decoder ~70 s and DINOv2 ~30-45 s in the first LSA step; the U-Net's blocks are
# compiled in the first diffusion step (not measured before: the limit leaves ~100 s for it); a
# timed step 0.6-1.4 s. The every_k:2 row is left out: its 13 frames make a new decoder shape,
# recompiled for 126 s in round one (every_k:5 keeps chunks of 5: no recompilation).
R2=${R2-"train.compile=[unet_blocks,vae_decoder,dino] train.optimizer=adamw8bit"}
R2_SWEEP=${R2_SWEEP:-"train.optimizer,loss.decode_frames=every_k:5,loss.dino_size"}
want r2-unet && phase r2-unet "${T_R2_UNET:-330}" --only steps --adapters unet --label "${R2_LABEL:-round2}" \
    --steps "${STEPS:-5}" --profile-decoder --sweep --sweep-only "$R2_SWEEP" --sweep-steps "${SWEEP_STEPS:-3}" $R2
# the inductor cache of r2-unet shortens this one's compilation
want r2-lora && phase r2-lora "${T_R2_LORA:-170}" --only steps --adapters lora --label "${R2_LABEL:-round2}" \
    --steps "${STEPS:-5}" $R2
ls -l "$OUT_DIR"
