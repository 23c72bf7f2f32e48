#!/usr/bin/env bash
# Train the demo pipeline shipped in checkpoints/kling-foley-demo, from nothing, on 2 CPU cores.
#
# Every trainable part is trained by the project's own scripts on the synthetic audio-visual dataset of
# `foley-toolkit make-synthetic` (events with known times), whose look (frame size, backgrounds, shapes, colours,
# textures, camera shake, lighting, silent distractors) is drawn per clip from four look families; a fifth family
# (neon) is held out of every stage and only used to measure generalisation. Trained: MelVAE (Algorithm 2),
# vocoder (Vocos-style, mel L1 + GAN), the Synchformer visual encoder (offset classification), the transformer
# (Algorithm 1, on cached features) and Mono2Stereo. The T5 text and CLIP vision encoders are small and stay at
# their random initialisation (see build_demo_base.py and the model card for why).
# Then it measures sync and level on held-out clips (seeds never used in training) of seen and unseen looks with
# `foley-toolkit eval-sync`'s library and writes the model card.
#
#   bash training/recipes/demo.sh                 # WORK=outputs/demo, OUT=checkpoints/kling-foley-demo
#
# Each stage is skipped when its output exists, so a rerun continues after an interruption (each training
# script also resumes from its own last checkpoint). Seeds are fixed; on the same machine and library
# versions the result is reproducible.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORK=${WORK:-outputs/demo}
OUT=${OUT:-checkpoints/kling-foley-demo}
TRAIN_CLIPS=${TRAIN_CLIPS:-500}
SYNC_CLIPS=${SYNC_CLIPS:-150}       # the first clips of the training set; decoding every frame is the slow part
HELDOUT_CLIPS=${HELDOUT_CLIPS:-30}
HELDOUT_LOOK=${HELDOUT_LOOK:-neon}  # never seen by any training stage
VAE_STEPS=${VAE_STEPS:-1200}
VOCODER_STEPS=${VOCODER_STEPS:-1500}
SYNC_STEPS=${SYNC_STEPS:-400}
TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-1500}
M2S_STEPS=${M2S_STEPS:-400}
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"
start=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "0. untrained demo components"
[ -f "$WORK/base/model_index.json" ] || python training/recipes/build_demo_base.py --output_dir "$WORK/base"

stage "1. synthetic data: train (seed 1) and held-out (seed 2: seen looks; seed 3: the held-out look family)"
[ -f "$WORK/data/train/metadata.jsonl" ] || foley-toolkit make-synthetic --out "$WORK/data/train" \
  --num-clips "$TRAIN_CLIPS" --seed 1 --looks all --held-out-looks "$HELDOUT_LOOK"
[ -f "$WORK/data/heldout/metadata.jsonl" ] || foley-toolkit make-synthetic --out "$WORK/data/heldout" \
  --num-clips "$HELDOUT_CLIPS" --seed 2 --looks all --held-out-looks "$HELDOUT_LOOK"
[ -f "$WORK/data/heldout_$HELDOUT_LOOK/metadata.jsonl" ] || foley-toolkit make-synthetic \
  --out "$WORK/data/heldout_$HELDOUT_LOOK" --num-clips "$HELDOUT_CLIPS" --seed 3 --looks "$HELDOUT_LOOK"
[ -f "$WORK/data/train_sync/metadata.jsonl" ] || python - "$WORK/data/train" "$WORK/data/train_sync" "$SYNC_CLIPS" <<'PY'
import json, os, sys
from pathlib import Path
source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
target.mkdir(parents=True, exist_ok=True)
lines = (source / "metadata.jsonl").read_text().splitlines()[:count]
for record in map(json.loads, lines):
    for key in ("file_name", "audio_file"):
        if record.get(key) and not (target / record[key]).exists():
            os.symlink(os.path.abspath(source / record[key]), target / record[key])
(target / "metadata.jsonl").write_text("\n".join(lines) + "\n")
PY

stage "2. MelVAE: Algorithm 2 (MSE -> KL ramp -> GAN ramp -> decoder only), latent statistics"
[ -f "$WORK/vae/pipeline/model_index.json" ] || \
  python training/train_vae.py --pretrained_model_name_or_path "$WORK/base" \
    --data_dir "$WORK/data/train" --output_dir "$WORK/vae" --seed 0 \
    --discriminator_config training/recipes/demo_mel_discriminator.json \
    --max_train_steps "$VAE_STEPS" --train_batch_size 8 --crop_seconds 1.5 --learning_rate 1e-3 \
    --stage1_end $((VAE_STEPS / 2)) --stage2_end $((VAE_STEPS * 3 / 4)) --stage3_end $((VAE_STEPS * 9 / 10)) \
    --checkpointing_steps 200 --checkpoints_total_limit 1 --resume_from_checkpoint latest --logging_steps 50

stage "3. Synchformer visual encoder: which audio offset matches this video window (offset classification)"
[ -f "$WORK/sync/pipeline/model_index.json" ] || \
  python training/train_sync_encoder.py --pretrained_model_name_or_path "$WORK/vae/pipeline" \
    --data_dir "$WORK/data/train_sync" --validation_data_dir "$WORK/data/heldout_$HELDOUT_LOOK" \
    --output_dir "$WORK/sync" --seed 0 --cache_dir "$WORK/sync/frame_cache" --max_train_steps "$SYNC_STEPS" \
    --train_batch_size 4 --learning_rate 1e-3 --validation_steps 200 --checkpointing_steps 100 \
    --checkpoints_total_limit 1 --resume_from_checkpoint latest --logging_steps 10

stage "4. vocoder (Vocos-style, mel magnitude prior) on ground-truth mels: mel L1 + multi-res STFT, energy crops"
[ -f "$WORK/vocoder/pipeline/model_index.json" ] || \
  python training/train_vocoder.py --pretrained_model_name_or_path "$WORK/sync/pipeline" \
    --data_dir "$WORK/data/train" --output_dir "$WORK/vocoder" --seed 0 --mel_source ground_truth \
    --vocoder_type vocos --vocoder_config small --crop_sampling energy --train_batch_size 4 --crop_seconds 1.0 \
    --learning_rate 1e-3 --gan_weight 0 --stft_loss_weight 5 \
    --max_train_steps "$VOCODER_STEPS" --checkpointing_steps 250 --checkpoints_total_limit 1 \
    --resume_from_checkpoint latest --logging_steps 50

stage "5. feature cache (MelVAE posteriors, T5, CLIP, trained Synchformer, stereo mels)"
[ -f "$WORK/features/index.jsonl" ] && [ -f "$WORK/features/.done" ] || {
  python training/extract_features.py --pretrained_model_name_or_path "$WORK/vocoder/pipeline" \
    --data_dir "$WORK/data/train" \
    --output_dir "$WORK/features" --segment_seconds 6 --concat_short --min_seconds 2 --stereo_mel --seed 0
  touch "$WORK/features/.done"
}

stage "6. transformer: flow matching on the cached features (Algorithm 1)"
[ -f "$WORK/transformer/pipeline/model_index.json" ] || \
  python training/train_transformer.py --pretrained_model_name_or_path "$WORK/vocoder/pipeline" \
    --feature_dir "$WORK/features" \
    --output_dir "$WORK/transformer" --seed 0 --max_train_steps "$TRANSFORMER_STEPS" --train_batch_size 16 \
    --learning_rate 1e-3 --lr_scheduler inverse --lr_inv_gamma 2000 --lr_power 0.5 --lr_warmup 0.99 \
    --text_dropout 0.1 --video_dropout 0.1 --use_ema --ema_decay 0.995 --mixed_precision bf16 \
    --checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest --logging_steps 50

stage "7. Mono2Stereo on the stereo clips, conditioned on the cached CLIP features"
[ -f "$WORK/mono2stereo/pipeline/model_index.json" ] || \
  python training/train_mono2stereo.py --pretrained_model_name_or_path "$WORK/transformer/pipeline" \
    --data_dir "$WORK/data/train" --feature_dir "$WORK/features" \
    --output_dir "$WORK/mono2stereo" --seed 0 --max_train_steps "$M2S_STEPS" --train_batch_size 8 \
    --crop_seconds 3 --learning_rate 1e-3 --checkpointing_steps 200 --checkpoints_total_limit 1 \
    --resume_from_checkpoint latest --logging_steps 50

echo $(( $(date +%s) - start )) > "$WORK/recipe_seconds.txt"  # training time, for the model card
stage "8. ship the pipeline, measure sync and level on the held-out clips, write the model card"
python training/recipes/finish_demo.py --pipeline "$WORK/mono2stereo/pipeline" --heldout "$WORK/data/heldout" \
  --heldout_looks "$WORK/data/heldout_$HELDOUT_LOOK" --work_dir "$WORK" --output_dir "$OUT" \
  --vocoder_type vocos
stage "done"
