#!/usr/bin/env python
"""Train `FoleyMMDiTTransformer` with flow matching on cached features (paper Algorithm 1, section 6.2).

Pipeline convention (diffusers `FlowMatchEulerDiscreteScheduler`): ``x_t = (1 - sigma) * x0 + sigma * noise``, the
model predicts ``v = noise - x0`` at ``timestep = sigma * 1000``; sigma is logit-normal. Text and video are dropped
independently (default 10% each) to the transformer's learned empty embeddings, which also makes the network
usable with any subset of modalities and gives classifier-free guidance its null condition. Items without a caption
or without video always use the empty embedding for it.

Durations: ``--duration_batching bucket`` (default) batches only items with the same number of latent frames, so
nothing is padded; ``pad`` batches any items, pads to the longest and masks the padded frames out of the loss
(the padded frames still take part in attention, since the transformer has no audio padding mask).

    accelerate launch --config_file training/configs/multi_gpu.yaml training/train_transformer.py \
        --pretrained_model base-pipeline --feature_dir features/ --output_dir runs/foley \
        --train_batch_size 16 --max_train_steps 200000 --mixed_precision bf16 --use_ema --gradient_checkpointing
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common.py` sits next to this script

import common  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402

logger = get_logger(__name__)


# ------------------------------------------------------------------------------------------------
# Arguments (the flow-matching ones are shared with train_lora.py)
# ------------------------------------------------------------------------------------------------


def add_flow_matching_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train_transformer.py and train_lora.py: model, cached features, noise sampling, condition
    dropout, validation."""
    group = parser.add_argument_group("flow matching")
    group.add_argument("--pretrained_model", type=str, required=True,
                       help="KlingFoleyPipeline folder: its VAE normalises latents, its transformer is the starting point "
                            "(unless --transformer_config), its components complete the final pipeline.")  # fmt: skip
    group.add_argument("--feature_dir", type=str, required=True, help="Output folder of training/extract_features.py.")
    group.add_argument("--text_dropout", type=float, default=0.1, help="Probability of replacing the text by its empty embedding.")
    group.add_argument("--video_dropout", type=float, default=0.1, help="Probability of replacing CLIP + sync by their empty embeddings.")
    group.add_argument("--weighting_scheme", type=str, default="logit_normal", choices=["logit_normal", "mode", "uniform"],
                       help="Distribution of the training noise level sigma.")  # fmt: skip
    group.add_argument("--logit_mean", type=float, default=0.0)
    group.add_argument("--logit_std", type=float, default=1.0)
    group.add_argument("--mode_scale", type=float, default=1.29)
    group.add_argument("--timestep_shift", type=float, default=1.0, help="Shift of sampled sigmas towards noise (1 = none).")
    group.add_argument("--duration_batching", type=str, default="bucket", choices=["bucket", "pad"],
                       help="bucket: batches of equal length; pad: mixed lengths, padded and masked in the loss.")  # fmt: skip
    group.add_argument("--validation_video", type=str, default=None, help="Video to generate audio for at validation.")
    group.add_argument("--validation_prompt", type=str, default=None, help="Prompt used at validation.")
    group.add_argument("--validation_duration", type=float, default=None, help="Seconds (required without a video).")
    group.add_argument("--validation_steps", type=int, default=None, help="Validate every N steps (and at the end).")
    group.add_argument("--num_validation_inference_steps", type=int, default=20)
    group.add_argument("--validation_guidance_scale", type=float, default=4.5)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flow-matching training of FoleyMMDiTTransformer on cached features.")
    add_flow_matching_args(parser)
    parser.add_argument("--transformer_config", type=str, default=None,
                        help="Train from scratch: a preset name (small, kling-foley-1.5b, -3b, -6b) or a config JSON file.")  # fmt: skip
    common.add_training_args(parser, default_learning_rate=1e-4, default_lr_scheduler="inverse")
    common.add_ema_args(parser)
    return parser.parse_args(input_args)


def check_flow_matching_args(args: argparse.Namespace) -> None:
    """Fail early, naming the flag, on dropout rates outside [0, 1], a missing ``--pretrained_model`` folder or
    validation without an input."""
    for name in ("text_dropout", "video_dropout"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"`--{name}` must be in [0, 1], got {getattr(args, name)}.")
    if not os.path.isdir(args.pretrained_model):
        raise FileNotFoundError(f"`--pretrained_model` {args.pretrained_model!r} is not a pipeline folder.")
    if args.validation_steps is not None and args.validation_video is None and args.validation_duration is None:
        raise ValueError("`--validation_steps` needs `--validation_video` or `--validation_duration`.")


# ------------------------------------------------------------------------------------------------
# Pieces shared with train_lora.py
# ------------------------------------------------------------------------------------------------


def build_feature_dataloader(args: argparse.Namespace):
    """`(dataset, batch_sampler, dataloader)` over the cached features, batched per `--duration_batching`."""
    from foley_toolkit.data import CachedFeatureDataset, LengthGroupedBatchSampler, collate_features

    dataset = CachedFeatureDataset(args.feature_dir)
    sampler = LengthGroupedBatchSampler(
        dataset.lengths,
        batch_size=args.train_batch_size,
        group_by_length=args.duration_batching == "bucket",
        shuffle=True,
        seed=args.seed,
    )
    dataloader = torch.utils.data.DataLoader(
        common.guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=common.BadItemCollate(collate_features),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip
    return dataset, sampler, dataloader


def load_latent_normalizer(args: argparse.Namespace):
    """The pipeline's MelVAE (on CPU, frozen): training needs only its `normalize_latents`."""
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE

    vae = MelVAE.from_pretrained(os.path.join(args.pretrained_model, "vae"))
    vae.requires_grad_(False).eval()
    if vae.config.latents_mean is None:
        logger.warning(
            "The VAE config has no latents_mean/latents_std: latents are only scaled by scaling_factor. "
            "training/train_vae.py writes the statistics."
        )
    return vae


def flow_matching_loss(
    transformer: torch.nn.Module,
    vae,
    batch: dict,
    args: argparse.Namespace,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Algorithm 1 for one batch: sample latents from the cached posterior, noise them, predict the velocity."""
    from foley_toolkit.training_utils import (
        condition_dropout_masks,
        flow_matching_inputs,
        masked_mse_loss,
        sample_flow_matching_sigmas,
    )

    mean, std = batch["latents_mean"], batch["latents_std"]
    batch_size = mean.shape[0]
    # All randomness from the checkpointed per-process generator (CPU), then moved to the device.
    posterior_noise = torch.randn(mean.shape, generator=generator).to(device)
    latents = vae.normalize_latents(mean.to(device) + std.to(device) * posterior_noise)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    sigmas = sample_flow_matching_sigmas(
        batch_size, args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale, args.timestep_shift,
        generator=generator, device=device,
    )  # fmt: skip
    drop_text, drop_video = condition_dropout_masks(
        batch_size, args.text_dropout, args.video_dropout, batch["has_text"].cpu(), batch["has_video"].cpu(), generator
    )
    noisy_latents, target, timesteps = flow_matching_inputs(latents, noise, sigmas)

    has_text_features = batch["text_embeds"] is not None
    has_video_features = batch["clip_features"] is not None
    prediction = transformer(
        noisy_latents,
        timesteps,
        encoder_hidden_states=batch["text_embeds"] if has_text_features else None,
        encoder_attention_mask=batch["text_mask"] if has_text_features else None,
        clip_features=batch["clip_features"] if has_video_features else None,
        sync_features=batch["sync_features"] if has_video_features else None,
        seconds_start=batch["seconds_start"].to(device),
        seconds_total=batch["duration"].to(device),
        drop_text=drop_text.to(device) if has_text_features else None,
        drop_clip=drop_video.to(device) if has_video_features else None,
        drop_sync=drop_video.to(device) if has_video_features else None,
        return_dict=False,
    )[0]
    frame_mask = batch["latent_mask"].to(device) if args.duration_batching == "pad" else None
    return masked_mse_loss(prediction, target, frame_mask)


class Validator:
    """Generates the validation clip with the pipeline (built once, sharing the training transformer), writes
    ``output_dir/validation/step-N.wav`` (atomically) and sends it to the ``--report_to`` trackers. Runs on the
    main process."""

    def __init__(self, args: argparse.Namespace, accelerator, transformer: torch.nn.Module, ema=None):
        self.args, self.accelerator, self.transformer, self.ema = args, accelerator, transformer, ema
        self.pipe = None

    @property
    def enabled(self) -> bool:
        return self.args.validation_video is not None or self.args.validation_duration is not None

    @torch.no_grad()
    def __call__(self, global_step: int) -> str | None:
        if not self.enabled or not self.accelerator.is_main_process:
            return None
        from foley_toolkit.audio_utils import save_audio
        from foley_toolkit.pipelines import KlingFoleyPipeline
        from foley_toolkit.training_utils import atomic_output

        model = common.unwrap_model(self.accelerator, self.transformer)
        if self.pipe is None:
            self.pipe = KlingFoleyPipeline.from_pretrained(self.args.pretrained_model, transformer=model)
            self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(self.accelerator.device)
        was_training = model.training
        model.eval()
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        try:
            output = self.pipe(
                video=self.args.validation_video,
                prompt=self.args.validation_prompt,
                duration=self.args.validation_duration,
                num_inference_steps=self.args.num_validation_inference_steps,
                guidance_scale=self.args.validation_guidance_scale,
                generator=torch.Generator().manual_seed(self.args.seed or 0),
            )
        finally:
            if self.ema is not None:
                self.ema.restore(model.parameters())
            model.train(was_training)
        path = Path(self.args.output_dir) / "validation" / f"step-{global_step}.wav"
        with atomic_output(path) as tmp:
            save_audio(tmp, output.audios[0], output.sample_rate)
        common.log_validation_audio(self.accelerator, output.audios[0], output.sample_rate, global_step)
        logger.info(f"Validation audio: {path}")
        return str(path)


def log_num_parameters(model: torch.nn.Module) -> None:
    """Log total and trainable parameter counts of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"  parameters: {total / 1e6:.2f}M, trainable: {trainable / 1e6:.4f}M")


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def load_transformer(args: argparse.Namespace):
    """The transformer to train: the pipeline's, or a new one from ``--transformer_config`` (a JSON file or a preset
    name)."""
    import json

    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer

    if args.transformer_config is None:
        return FoleyMMDiTTransformer.from_pretrained(os.path.join(args.pretrained_model, "transformer"))
    if os.path.isfile(args.transformer_config):
        with open(args.transformer_config, encoding="utf-8") as f:
            config = json.load(f)
    else:
        config = FoleyMMDiTTransformer.preset_config(args.transformer_config)
    return FoleyMMDiTTransformer.from_config(config)


def main(args: argparse.Namespace) -> dict:
    check_flow_matching_args(args)
    accelerator = common.setup_accelerator(args, find_unused_parameters=True)
    generator = common.make_generator(accelerator, args.seed)

    vae = load_latent_normalizer(args)
    transformer = load_transformer(args)
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    ema = None
    if args.use_ema:
        if accelerator.distributed_type == common.DistributedType.FSDP:
            raise ValueError("`--use_ema` is not supported with FSDP (sharded parameters); use DDP or DeepSpeed ZeRO-2.")
        ema = common.create_ema(transformer, args)
        ema.to(accelerator.device)
    common.register_checkpoint_hooks(accelerator, {"transformer": transformer}, {"transformer": ema} if ema else None)

    dataset, sampler, dataloader = build_feature_dataloader(args)
    common.scale_learning_rates(args, accelerator)
    optimizer = common.build_optimizer(args, [p for p in transformer.parameters() if p.requires_grad])
    transformer, optimizer, dataloader = accelerator.prepare(transformer, optimizer, dataloader)
    max_train_steps, steps_per_epoch = common.resolve_max_train_steps(args, len(dataloader))
    lr_scheduler = accelerator.prepare(common.build_lr_scheduler(args, optimizer, accelerator, max_train_steps))
    common.log_run_summary(accelerator, args, len(dataset), max_train_steps)
    log_num_parameters(common.unwrap_model(accelerator, transformer))
    common.init_trackers(accelerator, args, "train_transformer")

    global_step = common.resume_from_checkpoint(accelerator, args, generator)
    validator = Validator(args, accelerator, transformer, ema)
    trainable = [p for p in transformer.parameters() if p.requires_grad]

    def training_step(batch: dict, step: int) -> dict:
        loss = flow_matching_loss(transformer, vae, batch, args, generator, accelerator.device)
        common.backward_and_step(accelerator, loss, trainable, optimizer, lr_scheduler, args.max_grad_norm)
        return {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}

    def on_optimizer_step(step: int) -> None:
        if ema is not None:
            ema.step(common.unwrap_model(accelerator, transformer).parameters())
        if args.validation_steps and step % args.validation_steps == 0:
            validator(step)

    global_step, history = common.run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [transformer], max_train_steps, steps_per_epoch,
        global_step, generator, on_optimizer_step,
    )  # fmt: skip

    # Final model: trained weights in output_dir/transformer, and a full pipeline (EMA weights when enabled).
    accelerator.wait_for_everyone()
    model = common.gather_model_for_saving(accelerator, transformer)
    pipeline_dir = None
    if accelerator.is_main_process:
        from foley_toolkit.training_utils import atomic_save_pretrained

        atomic_save_pretrained(model, os.path.join(args.output_dir, "transformer"))
        if ema is not None:
            atomic_save_pretrained(ema, os.path.join(args.output_dir, "transformer_ema"))
            ema.copy_to(model.parameters())
        card = common.model_card(args, "train_transformer.py", ["transformer"], args.pretrained_model)
        pipeline_dir = common.save_pipeline_with_components(
            args.pretrained_model, os.path.join(args.output_dir, "pipeline"), {"transformer": model}, card
        )
        logger.info(f"Saved the trained pipeline to {pipeline_dir}")
        if validator.enabled and args.validation_steps and global_step % args.validation_steps != 0:
            validator(global_step)
    common.finish_training(accelerator, args, "train_transformer.py", pipeline_dir or args.output_dir, ["transformer"],
                           args.pretrained_model)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "global_step": global_step,
        "history": history,
        "num_processes": accelerator.num_processes,
        "pipeline_dir": str(pipeline_dir) if pipeline_dir else None,
    }


if __name__ == "__main__":
    main(parse_args())
