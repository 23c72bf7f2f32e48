#!/usr/bin/env python
"""Train the MelVAE with the paper's multi-stage stepping schedule (section 4.5.2, Algorithm 2).

Stage 1 (step <= --stage1_end): mel MSE only. Stage 2: + margin KL, its weight ramped to --kl_upper. Stage 3:
+ hinge GAN with the multi-scale mel discriminator (generator loss eq. 4, discriminator loss eq. 5-6 with the R1
penalty eq. 7), weight ramped to --gan_upper. Stage 4 (after --stage3_end): encoder and posterior projection frozen,
only the decoder and the discriminator train.

At the end the per-channel latent mean/std over the training data (posterior means) are written into the saved
MelVAE config (``latents_mean`` / ``latents_std``), which the pipeline and ``train_transformer.py`` use to
normalise latents. Started from a pipeline folder (``--pretrained_model_name_or_path``), the script also writes
``output_dir/pipeline``: that pipeline with the trained VAE, saved with ``save_pretrained`` and a fresh model card.

    accelerate launch training/train_vae.py --pretrained_model_name_or_path base-pipeline --data_dir audio/ \
        --output_dir runs/vae --crop_seconds 2 --stage1_end 50000 --stage2_end 100000 --stage3_end 300000 \
        --max_train_steps 400000
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from accelerate.logging import get_logger

from foley_toolkit.training import (
    Algorithm2Schedule,
    add_audio_data_args,
    add_pretrained_model_args,
    add_training_args,
    atomic_save_pretrained,
    backward_and_step,
    build_audio_dataloader,
    build_clip_dataset,
    build_lr_scheduler,
    build_optimizer,
    check_not_sharded,
    feature_matching_loss,
    finish_training,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    init_trackers,
    is_pipeline_folder,
    latent_statistics,
    load_module,
    log_run_summary,
    make_generator,
    margin_kl_loss,
    mel_mse_loss,
    model_card,
    r1_gradient_penalty,
    register_checkpoint_hooks,
    resolve_max_train_steps,
    resume_from_checkpoint,
    run_training_loop,
    save_trained_pipeline,
    scale_learning_rates,
    setup_accelerator,
    unwrap_model,
)

logger = get_logger(__name__)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MelVAE training (paper Algorithm 2).")
    group = parser.add_argument_group("models")
    add_pretrained_model_args(
        group, "Pipeline folder: start from its vae/, and write output_dir/pipeline, this pipeline with the new VAE."
    )
    group.add_argument("--vae", type=str, default=None, help="MelVAE folder to start from (overrides the pipeline's).")
    group.add_argument(
        "--vae_config", type=str, default=None, help="Train from scratch: MelVAE config JSON (defaults: paper size)."
    )
    group.add_argument("--discriminator", type=str, default=None, help="MelDiscriminator folder to start from.")
    group.add_argument("--discriminator_config", type=str, default=None, help="MelDiscriminator config JSON.")
    group = parser.add_argument_group("Algorithm 2")
    group.add_argument("--stage1_end", type=int, default=50_000, help="Last step of stage 1 (MSE only).")
    group.add_argument("--stage2_end", type=int, default=100_000, help="Last step of stage 2 (KL ramp).")
    group.add_argument("--stage3_end", type=int, default=200_000, help="Last step of stage 3 (GAN ramp); then stage 4.")
    group.add_argument("--kl_upper", type=float, default=1e-3, help="Final KL weight.")
    group.add_argument("--gan_upper", type=float, default=0.1, help="Final GAN weight (generator and discriminator).")
    group.add_argument("--kl_margin", type=float, default=0.0, help="KL margin delta (nats per latent element).")
    group.add_argument(
        "--r1_weight", type=float, default=1.0, help="Weight of the R1 penalty in the discriminator loss."
    )
    group.add_argument(
        "--feature_matching_weight", type=float, default=0.0, help="Optional discriminator feature matching."
    )
    group.add_argument("--discriminator_learning_rate", type=float, default=None, help="Defaults to --learning_rate.")
    group.add_argument("--latent_stats_max_items", type=int, default=2000, help="Items used for the latent statistics.")
    add_audio_data_args(parser, default_crop_seconds=2.0)
    add_training_args(parser, default_learning_rate=1e-4, default_lr_scheduler="constant")
    return parser.parse_args(input_args)


# ------------------------------------------------------------------------------------------------
# The discriminator (paper eq. 4-7)
# ------------------------------------------------------------------------------------------------


def build_discriminator(args: argparse.Namespace):
    from foley_toolkit.models.discriminator import MelDiscriminator

    if args.discriminator is not None:
        return MelDiscriminator.from_pretrained(args.discriminator)
    if args.discriminator_config is not None:
        with open(args.discriminator_config, encoding="utf-8") as f:
            return MelDiscriminator.from_config(json.load(f))
    return MelDiscriminator()


def discriminator_update(
    accelerator, discriminator, optimizer, lr_scheduler, real_mel, fake_mel, gan_weight, r1_weight, max_grad_norm
):
    """One discriminator step (paper eq. 5): ``gan_weight * L_adv + r1_weight * R1`` on real vs detached fake mels."""
    real_mel = real_mel.detach().requires_grad_(r1_weight > 0)
    # One forward for real and fake: DDP allows a single forward per backward.
    logits = discriminator(torch.cat([real_mel, fake_mel.detach()])).logits
    batch_size = real_mel.shape[0]
    real_logits = [logit[:batch_size] for logit in logits]
    fake_logits = [logit[batch_size:] for logit in logits]
    adversarial = hinge_discriminator_loss(real_logits, fake_logits)
    loss = gan_weight * adversarial
    logs = {"d_loss": adversarial.detach().item()}
    if r1_weight > 0:
        r1 = r1_gradient_penalty(real_logits, real_mel)
        loss = loss + r1_weight * r1
        logs["r1"] = r1.detach().item()
    backward_and_step(accelerator, loss, discriminator.parameters(), optimizer, lr_scheduler, max_grad_norm)
    return logs


def generator_gan_loss(accelerator, discriminator, fake_mel, real_mel=None, feature_matching_weight=0.0):
    """``L_g`` (eq. 4) of a reconstruction, through the frozen discriminator: its parameters get no gradient here,
    so the discriminator's own gradient accumulation is untouched."""
    module = unwrap_model(accelerator, discriminator)
    module.requires_grad_(False)
    try:
        with accelerator.autocast():
            fake = module(fake_mel)
            loss = generator_adversarial_loss(fake)
            if feature_matching_weight > 0 and real_mel is not None:
                with torch.no_grad():
                    real = module(real_mel)
                loss = loss + feature_matching_weight * feature_matching_loss(real, fake)
    finally:
        module.requires_grad_(True)
    return loss


# ------------------------------------------------------------------------------------------------
# The VAE
# ------------------------------------------------------------------------------------------------


class MelVAETrainingModule(torch.nn.Module):
    """Encode -> sample -> decode in one ``forward`` (so DDP syncs it) returning the reconstruction and the posterior
    moments."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.vae.encode(mel).latent_dist
        latents = posterior.sample(generator=generator)
        reconstruction = self.vae.decode(latents).sample[..., : mel.shape[-1]]
        return reconstruction, posterior.parameters


def load_vae(args: argparse.Namespace):
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE

    pretrained = args.pretrained_model_name_or_path
    folder = args.vae or (os.path.join(pretrained, "vae") if pretrained else None)
    if folder is not None and args.vae_config is None:
        return MelVAE.from_pretrained(folder)
    if args.vae_config is not None:
        with open(args.vae_config, encoding="utf-8") as f:
            return MelVAE.from_config(json.load(f))
    return MelVAE()


def vae_training_step(
    module, discriminator, batch, weights, args, accelerator, optimizers, schedulers, generator
) -> dict:
    """One step of Algorithm 2 with the given `CodecLossWeights`."""
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import DiagonalGaussianDistribution1D

    optimizer_g, optimizer_d = optimizers
    scheduler_g, scheduler_d = schedulers
    vae = unwrap_model(accelerator, module).vae
    with torch.no_grad():
        mel = vae.mel_spectrogram(batch["audio"][:, 0])
    reconstruction, moments = module(mel, generator=generator)
    posterior = DiagonalGaussianDistribution1D(moments.float())
    mse = mel_mse_loss(reconstruction, mel)
    kl = margin_kl_loss(posterior, margin=args.kl_margin)
    loss = weights.mse * mse + weights.kl * kl
    logs = {"mse": mse.detach().item(), "kl": kl.detach().item(), "stage": float(weights.stage)}
    if weights.gan > 0:
        logs.update(
            discriminator_update(accelerator, discriminator, optimizer_d, scheduler_d, mel, reconstruction, weights.gan,
                                 args.r1_weight, args.max_grad_norm)
        )  # fmt: skip
        g_loss = generator_gan_loss(accelerator, discriminator, reconstruction, mel, args.feature_matching_weight)
        loss = loss + weights.gan * g_loss
        logs["g_loss"] = g_loss.detach().item()
    trainable = [p for p in module.parameters() if p.requires_grad]  # the encoder is frozen in stage 4
    backward_and_step(accelerator, loss, trainable, optimizer_g, scheduler_g, args.max_grad_norm)
    logs["loss"] = loss.detach().item()
    return logs


@torch.no_grad()
def compute_latent_statistics(accelerator, vae, dataset, max_items: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of posterior means over up to `max_items` items, split over processes and combined."""
    indices = list(range(min(len(dataset), max_items)))[accelerator.process_index :: accelerator.num_processes]
    channels = vae.config.latent_channels
    count = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
    first = torch.zeros(channels, dtype=torch.float64, device=accelerator.device)
    second = torch.zeros(channels, dtype=torch.float64, device=accelerator.device)
    latents = [vae.encode(dataset[i]["audio"][:1].to(accelerator.device)).latent_dist.mean.float() for i in indices]
    if latents:
        mean, std = latent_statistics(latents)
        frames = sum(z.shape[-1] for z in latents)
        mean = torch.tensor(mean, dtype=torch.float64, device=accelerator.device)
        std = torch.tensor(std, dtype=torch.float64, device=accelerator.device)
        count += frames
        first += mean * frames
        second += (std.pow(2) + mean.pow(2)) * frames
    totals = accelerator.reduce(torch.cat([count, first, second]), reduction="sum")
    total = totals[0].clamp_min(1.0)
    mean = totals[1 : 1 + channels] / total
    std = (totals[1 + channels :] / total - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def main(args: argparse.Namespace) -> dict:
    schedule = Algorithm2Schedule.from_args(args)  # fails on bad stage bounds before any work
    accelerator = setup_accelerator(args, find_unused_parameters=True)
    check_not_sharded(accelerator, "train_vae.py")
    generator = make_generator(accelerator, args.seed)

    vae = load_vae(args)
    module = MelVAETrainingModule(vae).train()
    discriminator = build_discriminator(args).train()
    register_checkpoint_hooks(
        accelerator, {"vae": module, "discriminator": discriminator},
        save_functions={"vae": lambda m, folder: m.vae.save_pretrained(folder)},
        load_functions={"vae": lambda m, folder: load_module(m.vae, folder)},
    )  # fmt: skip

    dataset, sampler, dataloader = build_audio_dataloader(args, mono=True)
    scale_learning_rates(args, accelerator)
    optimizer_g = build_optimizer(args, module.parameters())
    optimizer_d = build_optimizer(args, discriminator.parameters(), args.discriminator_learning_rate)
    module, discriminator, optimizer_g, optimizer_d, dataloader = accelerator.prepare(
        module, discriminator, optimizer_g, optimizer_d, dataloader
    )
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    scheduler_g = accelerator.prepare(build_lr_scheduler(args, optimizer_g, accelerator, max_train_steps))
    scheduler_d = accelerator.prepare(build_lr_scheduler(args, optimizer_d, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    init_trackers(accelerator, args, "train_vae")
    global_step = resume_from_checkpoint(accelerator, args, generator)

    def training_step(batch: dict, step: int) -> dict:
        # Algorithm 2 counts steps from 1; stage 4 freezes the encoder.
        weights = schedule.step(unwrap_model(accelerator, module).vae, step + 1)
        return vae_training_step(
            module, discriminator, batch, weights, args, accelerator, (optimizer_g, optimizer_d),
            (scheduler_g, scheduler_d), generator,
        )  # fmt: skip

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [module, discriminator], max_train_steps,
        steps_per_epoch, global_step, generator,
    )  # fmt: skip

    # Latent statistics over the training data (whole segments, no crops), into the saved config.
    trained_vae = unwrap_model(accelerator, module).vae.eval()
    stats_dataset = build_clip_dataset(
        args, segment_seconds=args.segment_seconds if args.segment_seconds > 0 else None, min_seconds=args.min_seconds,
        load_video=False, mono=True,
    )  # fmt: skip
    latents_mean, latents_std = compute_latent_statistics(
        accelerator, trained_vae, stats_dataset, args.latent_stats_max_items
    )
    trained_vae.set_latent_statistics(latents_mean, latents_std)
    accelerator.wait_for_everyone()
    output = args.output_dir
    if accelerator.is_main_process:
        atomic_save_pretrained(trained_vae, os.path.join(args.output_dir, "vae"))
        atomic_save_pretrained(unwrap_model(accelerator, discriminator), os.path.join(args.output_dir, "discriminator"))
        if is_pipeline_folder(args.pretrained_model_name_or_path):
            card = model_card(args, "train_vae.py", ["vae"], args.pretrained_model_name_or_path)
            output = save_trained_pipeline(
                args.pretrained_model_name_or_path,
                os.path.join(args.output_dir, "pipeline"),
                {"vae": trained_vae},
                card,
            )
        logger.info(f"Saved the MelVAE (with latent statistics) to {os.path.join(args.output_dir, 'vae')}")
    finish_training(accelerator, args, "train_vae.py", output, ["vae"], args.pretrained_model_name_or_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"global_step": global_step, "history": history, "latents_mean": latents_mean, "latents_std": latents_std}


if __name__ == "__main__":
    main(parse_args())
