#!/usr/bin/env python
"""Train (or fine-tune) the BigVGAN-v2 vocoder (`MMAudioVocoder`) on log-mels of the codec's front end.

Losses on the generated waveform: L1 between its log-mel and the target log-mel (BigVGAN's mel loss), a
multi-resolution STFT loss, and a hinge GAN whose discriminator is the codec's multi-scale mel discriminator applied
to the log-mel of the generated waveform (plus optional feature matching and R1).

``--mel_source vae`` feeds the vocoder MelVAE reconstructions instead of ground-truth mels, the paper's remedy for
error propagation (section 4.5.2): the vocoder learns to turn the decoder's mels into the recorded waveform.

    accelerate launch training/train_vocoder.py --pretrained_model my-pipeline --data_dir audio/ \
        --output_dir runs/vocoder --mel_source vae --crop_seconds 1 --max_train_steps 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common.py` sits next to this script

import common  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from train_vae import build_discriminator, discriminator_update, generator_gan_loss  # noqa: E402

logger = get_logger(__name__)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Vocoder (MMAudioVocoder / BigVGAN-v2) training.")
    group = parser.add_argument_group("models")
    group.add_argument("--pretrained_model", type=str, default=None, help="Pipeline folder: start from its vocoder/ (and use its vae/).")
    group.add_argument("--vocoder", type=str, default=None, help="Vocoder folder to start from (overrides the pipeline's).")
    group.add_argument("--vocoder_config", type=str, default=None,
                       help="Train from scratch: 'bigvgan_v2_44khz_128band_512x', 'tiny' or a config JSON file.")  # fmt: skip
    group.add_argument("--vae", type=str, default=None, help="MelVAE folder for --mel_source vae (overrides the pipeline's).")
    group.add_argument("--mel_source", type=str, default="ground_truth", choices=["ground_truth", "vae"],
                       help="Vocoder input: mels of the recordings, or their MelVAE reconstructions.")  # fmt: skip
    group.add_argument("--discriminator", type=str, default=None, help="MelDiscriminator folder to start from.")
    group.add_argument("--discriminator_config", type=str, default=None, help="MelDiscriminator config JSON.")
    group.add_argument("--discriminator_learning_rate", type=float, default=None, help="Defaults to --learning_rate.")
    group.add_argument("--base_pipeline", type=str, default=None, help="Also write output_dir/pipeline with the new vocoder.")
    group = parser.add_argument_group("losses")
    group.add_argument("--mel_loss_weight", type=float, default=45.0, help="L1 log-mel loss weight (BigVGAN: 45).")
    group.add_argument("--stft_loss_weight", type=float, default=1.0, help="Multi-resolution STFT loss weight.")
    group.add_argument("--gan_weight", type=float, default=1.0, help="Adversarial loss weight (0: no GAN).")
    group.add_argument("--gan_start_step", type=int, default=0, help="Start the GAN after this many steps.")
    group.add_argument("--feature_matching_weight", type=float, default=2.0)
    group.add_argument("--r1_weight", type=float, default=0.0)
    common.add_audio_data_args(parser, default_crop_seconds=1.0)
    common.add_training_args(parser, default_learning_rate=2e-4, default_lr_scheduler="constant")
    return parser.parse_args(input_args)


def load_vocoder(args: argparse.Namespace):
    """The vocoder to train: new from ``--vocoder_config`` (a preset name or a JSON file), else ``--vocoder`` / the
    pipeline's."""
    from foley_toolkit.models.vocoder import (
        MMAudioVocoder,
        bigvgan_v2_44khz_128band_512x_config,
        build_vocoder,
        tiny_vocoder_config,
    )

    if args.vocoder_config is not None:
        presets = {"bigvgan_v2_44khz_128band_512x": bigvgan_v2_44khz_128band_512x_config, "tiny": tiny_vocoder_config}
        if args.vocoder_config in presets:
            return build_vocoder(presets[args.vocoder_config]())
        with open(args.vocoder_config, encoding="utf-8") as f:
            return build_vocoder(json.load(f))
    folder = args.vocoder or (os.path.join(args.pretrained_model, "vocoder") if args.pretrained_model else None)
    if folder is None:
        raise ValueError("Pass `--pretrained_model`, `--vocoder` or `--vocoder_config`.")
    return MMAudioVocoder.from_pretrained(folder)


def load_mel_front_end(args: argparse.Namespace):
    """`(mel_transform, vae)`: the codec's log-mel front end, and the frozen MelVAE when the inputs are its mels."""
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram, MelVAE

    folder = args.vae or (os.path.join(args.pretrained_model, "vae") if args.pretrained_model else None)
    if args.mel_source == "vae":
        if folder is None:
            raise ValueError("`--mel_source vae` needs `--vae` or `--pretrained_model`.")
        vae = MelVAE.from_pretrained(folder).requires_grad_(False).eval()
        return vae.log_mel, vae
    return LogMelSpectrogram(), None


def main(args: argparse.Namespace) -> dict:
    from foley_toolkit.training_utils import multi_resolution_stft_loss

    accelerator = common.setup_accelerator(args, find_unused_parameters=True)
    common.check_not_sharded(accelerator, "train_vocoder.py")
    generator = common.make_generator(accelerator, args.seed)

    vocoder = load_vocoder(args).train()
    mel_transform, vae = load_mel_front_end(args)
    mel_transform.to(accelerator.device)
    if vae is not None:
        vae.to(accelerator.device)
    discriminator = build_discriminator(args).train()
    common.register_checkpoint_hooks(accelerator, {"vocoder": vocoder, "discriminator": discriminator})

    dataset, sampler, dataloader = common.build_audio_dataloader(args, mono=True)
    common.scale_learning_rates(args, accelerator)
    optimizer_g = common.build_optimizer(args, vocoder.parameters())
    optimizer_d = common.build_optimizer(args, discriminator.parameters(), args.discriminator_learning_rate)
    vocoder, discriminator, optimizer_g, optimizer_d, dataloader = accelerator.prepare(
        vocoder, discriminator, optimizer_g, optimizer_d, dataloader
    )
    max_train_steps, steps_per_epoch = common.resolve_max_train_steps(args, len(dataloader))
    scheduler_g = accelerator.prepare(common.build_lr_scheduler(args, optimizer_g, accelerator, max_train_steps))
    scheduler_d = accelerator.prepare(common.build_lr_scheduler(args, optimizer_d, accelerator, max_train_steps))
    common.log_run_summary(accelerator, args, len(dataset), max_train_steps)
    common.init_trackers(accelerator, args, "train_vocoder")
    global_step = common.resume_from_checkpoint(accelerator, args, generator)

    def training_step(batch: dict, step: int) -> dict:
        audio = batch["audio"][:, 0]  # (batch, samples), mono
        with torch.no_grad():
            target_mel = mel_transform(audio)
            input_mel = target_mel
            if vae is not None:
                latents = vae.encode(target_mel).latent_dist.mode()
                input_mel = vae.decode(latents).sample[..., : target_mel.shape[-1]]
        waveform = vocoder(input_mel).sample[:, 0]  # (batch, frames * 512)
        length = min(waveform.shape[-1], audio.shape[-1])
        waveform, reference = waveform[..., :length], audio[..., :length]
        generated_mel = mel_transform(waveform)
        mel_loss = F.l1_loss(generated_mel, mel_transform(reference))
        stft_loss = multi_resolution_stft_loss(waveform, reference)
        loss = args.mel_loss_weight * mel_loss + args.stft_loss_weight * stft_loss
        logs = {"mel_l1": mel_loss.detach().item(), "stft": stft_loss.detach().item()}
        if args.gan_weight > 0 and step >= args.gan_start_step:
            real_mel = mel_transform(reference)
            logs.update(
                discriminator_update(accelerator, discriminator, optimizer_d, scheduler_d, real_mel, generated_mel,
                                     args.gan_weight, args.r1_weight, args.max_grad_norm)
            )  # fmt: skip
            g_loss = generator_gan_loss(accelerator, discriminator, generated_mel, real_mel, args.feature_matching_weight)
            loss = loss + args.gan_weight * g_loss
            logs["g_loss"] = g_loss.detach().item()
        common.backward_and_step(accelerator, loss, vocoder.parameters(), optimizer_g, scheduler_g, args.max_grad_norm)
        logs["loss"] = loss.detach().item()
        return logs

    global_step, history = common.run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [vocoder, discriminator], max_train_steps,
        steps_per_epoch, global_step, generator,
    )  # fmt: skip

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = common.unwrap_model(accelerator, vocoder)
        trained.save_pretrained(os.path.join(args.output_dir, "vocoder"))
        common.unwrap_model(accelerator, discriminator).save_pretrained(os.path.join(args.output_dir, "discriminator"))
        if args.base_pipeline:
            common.save_pipeline_with_components(args.base_pipeline, os.path.join(args.output_dir, "pipeline"), {"vocoder": trained})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"global_step": global_step, "history": history}


if __name__ == "__main__":
    main(parse_args())
