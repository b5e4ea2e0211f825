#!/usr/bin/env bash
# The checks and measurements that need a CUDA GPU, in one call, in the order they matter, each
# under a share of one deadline (a lent GPU machine is held for minutes, not hours):
#   1. step_overhead.py at full size (DeiT-S <- RegNetY-16GF and ResNet-50 <- DeiT-B, 224 px,
#      batch 128, bf16): step time over the limit, images/s, FLOPs;
#   2. loss_cost.py part b: the hand-written patch-CKA kernel against plain autograd on this GPU,
#      and gpu_checks.py (bilinear resizing, the kernel's agreement with autograd on this GPU);
#   3. at once: step_overhead.py's memory children (peaks are per process), memory_breakdown.py,
#      every recipe's smoke test with its own mixed precision (plus the headline recipe with
#      torch_compile), the demo;
#   4. step_overhead.py with the student compiled (--compile), while time is left;
#   5. step_overhead.py with the teacher's weights in bf16 (--teacher-dtype bfloat16), likewise.
#
#   bash benchmarks/on_gpu.sh OUT_DIR [SECONDS]      # default 540 s; JSON and logs in OUT_DIR
#
# DEVICE=cpu FULL= ROUNDS=2 runs the same path on a CPU at the scaled-down sizes, to try the script.
set -u
OUT=${1:?usage: bash benchmarks/on_gpu.sh OUT_DIR [SECONDS]}
BUDGET=${2:-540}
DEVICE=${DEVICE:-cuda}
FULL=${FULL---full}
ROUNDS=${ROUNDS:-15}
PY=${PY:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
END=$((SECONDS + BUDGET))
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# timeout for a phase: its cap, or what is left of the deadline if that is less
left() { local rest=$((END - SECONDS)); echo $((rest < $1 ? (rest > 0 ? rest : 1) : $1)); }
phase() { echo; echo "=== $1 ($(date -u +%H:%M:%S), $((END - SECONDS)) s left)"; }

phase "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
$PY -c "import torch, transformers, timm, accelerate, datasets, hf_rcka; print('torch', torch.__version__,
'transformers', transformers.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__,
'datasets', datasets.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"

phase "1. step overhead at full size, timed (no other work on the machine)"
timeout "$(left 220)" $PY benchmarks/step_overhead.py --device "$DEVICE" $FULL --rounds "$ROUNDS" --no-memory \
    --profile all --json "$OUT/step_overhead_${DEVICE}.json"

phase "2. patch-CKA kernel against autograd"
timeout "$(left 70)" $PY benchmarks/loss_cost.py --device "$DEVICE" --parts b --threads 0 \
    --channels 64,256,768 --pcka-settings 8x28x4,2x64x16,128x14x2 --json "$OUT/loss_cost_patch_cka_${DEVICE}.json"
timeout "$(left 40)" $PY benchmarks/gpu_checks.py "$DEVICE"

phase "3. memory children, recipe smoke tests and the demo, at once"
# The PCKA recipe's teacher is a ViT-B the user fine-tunes first: its config (100 classes) stands in.
$PY -c "from transformers import ViTConfig as C, ViTImageProcessor as P; import sys
C(num_labels=100, architectures=['ViTForImageClassification']).save_pretrained(sys.argv[1]); P().save_pretrained(sys.argv[1])" \
    "$WORK/vit_base_cifar100"
P3=$(left 200)
timeout "$P3" $PY benchmarks/step_overhead.py --device "$DEVICE" $FULL --rounds 0 --memory-jobs 5 \
    --json "$OUT/step_overhead_${DEVICE}_memory.json" > "$WORK/memory.log" 2>&1 &
timeout "$P3" $PY benchmarks/memory_breakdown.py "$DEVICE" > "$WORK/breakdown.log" 2>&1 &
timeout "$P3" $PY scripts/demo.py --output_root "$WORK/demo" > "$OUT/demo.log" 2>&1 &
smoke() {  # recipe, name, extra flags
    timeout "$P3" $PY scripts/distill.py "recipes/$1.yaml" --smoke_test true --output_dir "$WORK/$2" "${@:3}" \
        > "$WORK/smoke-$2.log" 2>&1
    echo "--- $2 (rc $?) ${*:3}" >> "$WORK/smoke.summary"
    sed -n '/smoke test passed/,$p' "$WORK/smoke-$2.log" >> "$WORK/smoke.summary"
    grep -E "Error|error:|Traceback" "$WORK/smoke-$2.log" | tail -5 >> "$WORK/smoke.summary"
}
(
    for r in deit_from_regnet deit_token-deit_small_distilled_from_regnety160-imagenet \
             kd-deit_small_from_regnety160-imagenet; do smoke "$r" "$r" & done
    smoke pcka-resnet18_from_vit_base-cifar100 pcka --teacher_model_name_or_path "$WORK/vit_base_cifar100" & wait
    for r in ekt-resnet18_from_resnet34-imagenet rcka-resnet18_from_resnet34-imagenet \
             srd-resnet18_from_resnet34-imagenet; do smoke "$r" "$r" & done
    smoke deit_from_regnet deit_from_regnet-compiled --torch_compile true & wait
) &
wait
cat "$WORK/memory.log" "$WORK/breakdown.log"
cat "$WORK/smoke.summary" | tee "$OUT/smoke_summary.txt"
tail -25 "$OUT/demo.log"

phase "4. step overhead with the student compiled"
timeout "$(left 400)" $PY benchmarks/step_overhead.py --device "$DEVICE" $FULL --rounds "$ROUNDS" --no-memory \
    --pairs cnn2vit --variants limit,rcka --compile --json "$OUT/step_overhead_${DEVICE}_compiled.json"

phase "5. step overhead with the teacher's weights in bf16 (teacher_dtype)"
timeout "$(left 400)" $PY benchmarks/step_overhead.py --device "$DEVICE" $FULL --rounds "$ROUNDS" --no-memory \
    --variants limit,rcka,rcka+feature_cka,rcka+patch_cka --teacher-dtype bfloat16 \
    --json "$OUT/step_overhead_${DEVICE}_teacher_bf16.json"

phase "done"
rm -rf "$WORK"
