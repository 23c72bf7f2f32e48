#!/usr/bin/env bash
# Train the demo pipeline shipped in checkpoints/kling-foley-demo, from nothing, on 2 CPU cores.
#
# Every trainable part is trained by the project's own scripts on the synthetic audio-visual dataset of
# `foley-toolkit make-synthetic` (events with known times): MelVAE (Algorithm 2), vocoder (BigVGAN-v2),
# transformer (Algorithm 1, on cached features) and Mono2Stereo. The three conditioning encoders are small
# and stay at their random initialisation (see build_demo_base.py and the model card for why).
# Then it measures sync on held-out clips (seeds never used in training) with `foley-toolkit eval-sync`
# and writes the model card.
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
TRAIN_CLIPS=${TRAIN_CLIPS:-400}
HELDOUT_CLIPS=${HELDOUT_CLIPS:-30}
VAE_STEPS=${VAE_STEPS:-1200}
VOCODER_STEPS=${VOCODER_STEPS:-1500}
TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-3000}
M2S_STEPS=${M2S_STEPS:-400}
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"
start=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "0. untrained demo components"
[ -f "$WORK/base/model_index.json" ] || python training/recipes/build_demo_base.py --output_dir "$WORK/base"

stage "1. synthetic data: train (seed 1) and held-out (seed 2, never used in training)"
[ -f "$WORK/data/train/metadata.jsonl" ] || \
  foley-toolkit make-synthetic --out "$WORK/data/train" --num-clips "$TRAIN_CLIPS" --seed 1
[ -f "$WORK/data/heldout/metadata.jsonl" ] || \
  foley-toolkit make-synthetic --out "$WORK/data/heldout" --num-clips "$HELDOUT_CLIPS" --seed 2

stage "2. MelVAE: Algorithm 2 (MSE -> KL ramp -> GAN ramp -> decoder only), latent statistics"
[ -f "$WORK/vae/pipeline/model_index.json" ] || \
  python training/train_vae.py --pretrained_model "$WORK/base" --base_pipeline "$WORK/base" \
    --data_dir "$WORK/data/train" --output_dir "$WORK/vae" --seed 0 \
    --discriminator_config training/recipes/demo_mel_discriminator.json \
    --max_train_steps "$VAE_STEPS" --train_batch_size 8 --crop_seconds 1.5 --learning_rate 1e-3 \
    --stage1_end $((VAE_STEPS / 2)) --stage2_end $((VAE_STEPS * 3 / 4)) --stage3_end $((VAE_STEPS * 9 / 10)) \
    --checkpointing_steps 200 --checkpoints_total_limit 1 --resume_from_checkpoint latest --logging_steps 50

stage "3. vocoder on ground-truth mels (mel + multi-resolution STFT losses)"
[ -f "$WORK/vocoder/pipeline/model_index.json" ] || \
  python training/train_vocoder.py --pretrained_model "$WORK/vae/pipeline" --base_pipeline "$WORK/vae/pipeline" \
    --data_dir "$WORK/data/train" --output_dir "$WORK/vocoder" --seed 0 --mel_source ground_truth \
    --max_train_steps "$VOCODER_STEPS" --train_batch_size 4 --crop_seconds 0.5 --learning_rate 2e-3 \
    --gan_weight 0 --checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest \
    --logging_steps 50

stage "4. feature cache (MelVAE posteriors, T5, CLIP, Synchformer, stereo mels)"
[ -f "$WORK/features/index.jsonl" ] && [ -f "$WORK/features/.done" ] || {
  python training/extract_features.py --pretrained_model "$WORK/vocoder/pipeline" --data_dir "$WORK/data/train" \
    --output_dir "$WORK/features" --segment_seconds 6 --concat_short --min_seconds 2 --stereo_mel --seed 0
  touch "$WORK/features/.done"
}

stage "5. transformer: flow matching on the cached features (Algorithm 1)"
[ -f "$WORK/transformer/pipeline/model_index.json" ] || \
  python training/train_transformer.py --pretrained_model "$WORK/vocoder/pipeline" --feature_dir "$WORK/features" \
    --output_dir "$WORK/transformer" --seed 0 --max_train_steps "$TRANSFORMER_STEPS" --train_batch_size 16 \
    --learning_rate 1e-3 --lr_scheduler inverse --lr_inv_gamma 2000 --lr_power 0.5 --lr_warmup 0.99 \
    --text_dropout 0.1 --video_dropout 0.1 --use_ema --ema_decay 0.995 --mixed_precision bf16 \
    --checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest --logging_steps 50

stage "6. Mono2Stereo on the stereo clips, conditioned on the cached CLIP features"
[ -f "$WORK/mono2stereo/pipeline/model_index.json" ] || \
  python training/train_mono2stereo.py --pretrained_model "$WORK/transformer/pipeline" \
    --base_pipeline "$WORK/transformer/pipeline" --data_dir "$WORK/data/train" --feature_dir "$WORK/features" \
    --output_dir "$WORK/mono2stereo" --seed 0 --max_train_steps "$M2S_STEPS" --train_batch_size 8 \
    --crop_seconds 3 --learning_rate 1e-3 --checkpointing_steps 200 --checkpoints_total_limit 1 \
    --resume_from_checkpoint latest --logging_steps 50

echo $(( $(date +%s) - start )) > "$WORK/recipe_seconds.txt"  # training time, for the model card
stage "7. ship the pipeline, measure sync on the held-out clips, write the model card"
python training/recipes/finish_demo.py --pipeline "$WORK/mono2stereo/pipeline" --heldout "$WORK/data/heldout" \
  --work_dir "$WORK" --output_dir "$OUT"
stage "done"
