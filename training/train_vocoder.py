#!/usr/bin/env python
"""Train (or fine-tune) a vocoder on log-mels of the codec's front end, the way HiFi-GAN and BigVGAN are trained.

Two vocoders (``--vocoder_type``): ``bigvgan``, diffusers' `MMAudioVocoder` (BigVGAN-v2), and ``vocos``,
`VocosVocoder` (ConvNeXt at the mel frame rate + inverse STFT), which converges far faster on a small budget.

Generator loss: ``45 * L1(log-mel)`` (HiFi-GAN / BigVGAN), optional multi-resolution STFT loss, and from
``--gan_start_step`` a least-squares GAN (HiFi-GAN / BigVGAN, summed over sub-discriminators) against a
multi-period discriminator (periods 2, 3, 5, 7, 11) and a multi-resolution spectrogram discriminator, plus
``2 * feature matching`` (HiFi-GAN's L_FM, summed over the activation maps). The discriminators train from
``--discriminator_start_step`` (default: ``--gan_start_step``); starting them earlier warms them up before
the generator sees their gradient.

For sparse Foley clips (short loud events on a quiet bed) use a Vocos preset (its pseudo-inverse mel magnitude
prior gives the output the input's level from the first step) and ``--crop_sampling energy`` (half of the crops
drawn in proportion to their energy, so every batch holds events).

``--mel_source vae`` feeds the vocoder MelVAE reconstructions instead of ground-truth mels, the paper's remedy for
error propagation (section 4.5.2): the vocoder learns to turn the decoder's mels into the recorded waveform.

Started from a pipeline folder (``--pretrained_model_name_or_path``), the script also writes ``output_dir/pipeline``:
that pipeline with the trained vocoder, saved with ``save_pretrained`` and a fresh model card.

    accelerate launch training/train_vocoder.py --vocoder_type vocos --pretrained_model_name_or_path my-pipeline \
        --data_dir audio/ --output_dir runs/vocoder --crop_seconds 1 --max_train_steps 100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from foley_toolkit.training import (
    add_audio_data_args,
    add_pretrained_model_args,
    add_training_args,
    atomic_save_pretrained,
    backward_and_step,
    build_audio_dataloader,
    build_lr_scheduler,
    build_optimizer,
    check_not_sharded,
    feature_matching_loss,
    finish_training,
    init_trackers,
    is_pipeline_folder,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    log_run_summary,
    make_generator,
    model_card,
    multi_resolution_stft_loss,
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

VOCODER_TYPES = ("bigvgan", "vocos")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Vocoder (BigVGAN-v2 or Vocos) training.")
    group = parser.add_argument_group("models")
    group.add_argument("--vocoder_type", type=str, default="bigvgan", choices=VOCODER_TYPES,
                       help="bigvgan: MMAudioVocoder (BigVGAN-v2); vocos: VocosVocoder.")  # fmt: skip
    add_pretrained_model_args(
        group,
        "Pipeline folder: start from its vocoder/ (when of --vocoder_type), use its vae/, and write "
        "output_dir/pipeline, this pipeline with the new vocoder.",
    )
    group.add_argument(
        "--vocoder", type=str, default=None, help="Vocoder folder to start from (overrides the pipeline's)."
    )
    group.add_argument("--vocoder_config", type=str, default=None,
                       help="Train from scratch: a preset ('bigvgan_v2_44khz_128band_512x' or 'tiny' for bigvgan; "
                            "'small' or 'tiny' for vocos, both with the mel magnitude prior) or a config JSON file. "
                            "Vocos without any vocoder to start from builds the 'small' preset.")  # fmt: skip
    group.add_argument(
        "--vae", type=str, default=None, help="MelVAE folder for --mel_source vae (overrides the pipeline's)."
    )
    group.add_argument("--mel_source", type=str, default="ground_truth", choices=["ground_truth", "vae"],
                       help="Vocoder input: mels of the recordings, or their MelVAE reconstructions.")  # fmt: skip
    group.add_argument("--discriminator", type=str, default=None,
                       help="Folder with mpd/ and mrd/ subfolders (a previous run's output or checkpoint) to start from.")  # fmt: skip
    group.add_argument("--mpd_config", type=str, default=None, help="MultiPeriodDiscriminator config JSON.")
    group.add_argument("--mrd_config", type=str, default=None, help="MultiResolutionDiscriminator config JSON.")
    group.add_argument("--discriminator_learning_rate", type=float, default=None, help="Defaults to --learning_rate.")
    group = parser.add_argument_group("losses")
    group.add_argument(
        "--mel_loss_weight", type=float, default=45.0, help="L1 log-mel loss weight (HiFi-GAN/BigVGAN: 45)."
    )
    group.add_argument(
        "--stft_loss_weight", type=float, default=1.0, help="Multi-resolution STFT loss weight (0: off)."
    )
    group.add_argument(
        "--gan_weight", type=float, default=1.0, help="Least-squares adversarial loss weight (0: no GAN)."
    )
    group.add_argument(
        "--gan_start_step", type=int, default=0, help="The generator gets the GAN losses from this step."
    )
    group.add_argument("--discriminator_start_step", type=int, default=None,
                       help="The discriminators train from this step (default --gan_start_step; earlier = warm start).")  # fmt: skip
    group.add_argument("--feature_matching_weight", type=float, default=2.0, help="HiFi-GAN: 2 x L_FM.")
    add_audio_data_args(parser, default_crop_seconds=1.0)
    add_training_args(parser, default_learning_rate=2e-4, default_lr_scheduler="constant")
    args = parser.parse_args(input_args)
    if args.discriminator_start_step is None:
        args.discriminator_start_step = args.gan_start_step
    for name in ("gan_start_step", "discriminator_start_step"):
        if getattr(args, name) < 0:
            raise ValueError(f"`--{name}` must be >= 0, got {getattr(args, name)}.")
    if args.discriminator_start_step > args.gan_start_step:
        raise ValueError(
            f"`--discriminator_start_step` ({args.discriminator_start_step}) must be <= `--gan_start_step` "
            f"({args.gan_start_step}): the generator must not learn from an untrained discriminator."
        )
    return args


def _read_json(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{flag}` {path!r}: expected a preset name or a config JSON file.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _saved_class_name(folder: str) -> str | None:
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as f:
        return json.load(f).get("_class_name")


def load_vocoder(args: argparse.Namespace):
    """The vocoder to train: new from ``--vocoder_config`` (a preset name or a JSON file), else ``--vocoder`` / the
    pipeline's (when it is of ``--vocoder_type``); a Vocos with nothing to start from is the 'small' preset."""
    from foley_toolkit.models.vocoder import (
        MMAudioVocoder,
        bigvgan_v2_44khz_128band_512x_config,
        build_vocoder,
        tiny_vocoder_config,
    )
    from foley_toolkit.models.vocoder_vocos import VocosVocoder, tiny_vocos_config, vocos_small_config

    vocoder_class = VocosVocoder if args.vocoder_type == "vocos" else MMAudioVocoder
    if args.vocoder_config is not None:
        if args.vocoder_type == "vocos":
            presets = {"small": vocos_small_config, "tiny": tiny_vocos_config}
            config = (
                presets[args.vocoder_config]()
                if args.vocoder_config in presets
                else _read_json(args.vocoder_config, "--vocoder_config")
            )
            return VocosVocoder.from_config(config)
        presets = {"bigvgan_v2_44khz_128band_512x": bigvgan_v2_44khz_128band_512x_config, "tiny": tiny_vocoder_config}
        if args.vocoder_config in presets:
            return build_vocoder(presets[args.vocoder_config]())
        return build_vocoder(_read_json(args.vocoder_config, "--vocoder_config"))
    if args.vocoder is not None:
        found = _saved_class_name(args.vocoder)
        if found != vocoder_class.__name__:
            raise ValueError(
                f"`--vocoder` {args.vocoder!r} holds a {found} (config.json `_class_name`), expected a "
                f"{vocoder_class.__name__} for `--vocoder_type {args.vocoder_type}`."
            )
        return vocoder_class.from_pretrained(args.vocoder)
    pretrained = args.pretrained_model_name_or_path
    if pretrained is not None:
        folder = os.path.join(pretrained, "vocoder")
        if _saved_class_name(folder) == vocoder_class.__name__:
            return vocoder_class.from_pretrained(folder)
        if args.vocoder_type == "bigvgan":
            raise ValueError(f"`--pretrained_model_name_or_path` {pretrained!r} has no MMAudioVocoder in vocoder/.")
    if args.vocoder_type == "vocos":
        return VocosVocoder.from_config(vocos_small_config())
    raise ValueError("Pass `--pretrained_model_name_or_path`, `--vocoder` or `--vocoder_config`.")


def build_discriminators(args: argparse.Namespace):
    """`(mpd, mrd)`: from ``--discriminator`` (its mpd/ and mrd/), else the ``--mpd_config`` / ``--mrd_config``
    JSONs, else the HiFi-GAN / BigVGAN defaults."""
    from foley_toolkit.models.discriminator import MultiPeriodDiscriminator, MultiResolutionDiscriminator

    if args.discriminator is not None:
        for name in ("mpd", "mrd"):
            if not os.path.isdir(os.path.join(args.discriminator, name)):
                raise FileNotFoundError(f"`--discriminator` {args.discriminator!r} has no {name}/ subfolder.")
        return (
            MultiPeriodDiscriminator.from_pretrained(os.path.join(args.discriminator, "mpd")),
            MultiResolutionDiscriminator.from_pretrained(os.path.join(args.discriminator, "mrd")),
        )
    mpd = (
        MultiPeriodDiscriminator.from_config(_read_json(args.mpd_config, "--mpd_config"))
        if args.mpd_config
        else MultiPeriodDiscriminator()
    )
    mrd = (
        MultiResolutionDiscriminator.from_config(_read_json(args.mrd_config, "--mrd_config"))
        if args.mrd_config
        else MultiResolutionDiscriminator()
    )
    return mpd, mrd


def discriminators_update(accelerator, discriminators, optimizer, lr_scheduler, real, fake, max_grad_norm) -> dict:
    """One least-squares step of every discriminator on real vs detached generated waveforms `(batch, samples)`.
    Real and fake go through each discriminator in one forward (DDP allows one forward per backward)."""
    both = torch.cat([real, fake.detach()]).unsqueeze(1)
    batch_size = real.shape[0]
    logs, total = {}, 0.0
    for name, discriminator in discriminators.items():
        logits = discriminator(both).logits
        loss = least_squares_discriminator_loss([l[:batch_size] for l in logits], [l[batch_size:] for l in logits])
        logs[f"d_{name}"] = loss.detach().item()
        total = total + loss
    parameters = itertools.chain(*(d.parameters() for d in discriminators.values()))
    backward_and_step(accelerator, total, parameters, optimizer, lr_scheduler, max_grad_norm)
    logs["d_loss"] = total.detach().item()
    return logs


def generator_adversarial_losses(accelerator, discriminators, real, fake) -> tuple[torch.Tensor, torch.Tensor]:
    """`(adversarial, feature_matching)` of generated waveforms through the frozen discriminators (their
    parameters get no gradient here): least-squares generator loss and HiFi-GAN's summed L1 feature matching."""
    adversarial, matching = 0.0, 0.0
    for discriminator in discriminators.values():
        module = unwrap_model(accelerator, discriminator)
        module.requires_grad_(False)
        try:
            with accelerator.autocast():
                fake_out = module(fake.unsqueeze(1))
                with torch.no_grad():
                    real_out = module(real.unsqueeze(1))
                adversarial = adversarial + least_squares_generator_loss(fake_out)
                matching = matching + feature_matching_loss(real_out, fake_out, reduction="sum")
        finally:
            module.requires_grad_(True)
    return adversarial, matching


def load_mel_front_end(args: argparse.Namespace):
    """`(mel_transform, vae)`: the codec's log-mel front end, and the frozen MelVAE when the inputs are its mels."""
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram, MelVAE

    pretrained = args.pretrained_model_name_or_path
    folder = args.vae or (os.path.join(pretrained, "vae") if pretrained else None)
    if args.mel_source == "vae":
        if folder is None:
            raise ValueError("`--mel_source vae` needs `--vae` or `--pretrained_model_name_or_path`.")
        vae = MelVAE.from_pretrained(folder).requires_grad_(False).eval()
        return vae.log_mel, vae
    return LogMelSpectrogram(), None


def main(args: argparse.Namespace) -> dict:
    accelerator = setup_accelerator(args, find_unused_parameters=True)
    check_not_sharded(accelerator, "train_vocoder.py")
    generator = make_generator(accelerator, args.seed)

    vocoder = load_vocoder(args).train()
    mel_transform, vae = load_mel_front_end(args)
    mel_transform.to(accelerator.device)
    if vae is not None:
        vae.to(accelerator.device)
    mpd, mrd = build_discriminators(args)
    mpd.train(), mrd.train()
    register_checkpoint_hooks(accelerator, {"vocoder": vocoder, "mpd": mpd, "mrd": mrd})

    dataset, sampler, dataloader = build_audio_dataloader(args, mono=True)
    scale_learning_rates(args, accelerator)
    optimizer_g = build_optimizer(args, vocoder.parameters())
    optimizer_d = build_optimizer(
        args, itertools.chain(mpd.parameters(), mrd.parameters()), args.discriminator_learning_rate
    )
    vocoder, mpd, mrd, optimizer_g, optimizer_d, dataloader = accelerator.prepare(
        vocoder, mpd, mrd, optimizer_g, optimizer_d, dataloader
    )
    discriminators = {"mpd": mpd, "mrd": mrd}
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    scheduler_g = accelerator.prepare(build_lr_scheduler(args, optimizer_g, accelerator, max_train_steps))
    scheduler_d = accelerator.prepare(build_lr_scheduler(args, optimizer_d, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    init_trackers(accelerator, args, "train_vocoder")
    global_step = resume_from_checkpoint(accelerator, args, generator)

    def training_step(batch: dict, step: int) -> dict:
        audio = batch["audio"][:, 0]  # (batch, samples), mono
        with torch.no_grad():
            target_mel = mel_transform(audio)
            input_mel = target_mel
            if vae is not None:
                latents = vae.encode(target_mel).latent_dist.mode()
                input_mel = vae.decode(latents).sample[..., : target_mel.shape[-1]]
        waveform = vocoder(input_mel).sample[:, 0]  # (batch, mel frames * hop length)
        length = min(waveform.shape[-1], audio.shape[-1])
        waveform, reference = waveform[..., :length], audio[..., :length]
        with torch.no_grad():
            reference_mel = mel_transform(reference)
        mel_loss = F.l1_loss(mel_transform(waveform), reference_mel)
        loss = args.mel_loss_weight * mel_loss
        logs = {"mel_l1": mel_loss.detach().item()}
        if args.stft_loss_weight > 0:
            stft_loss = multi_resolution_stft_loss(waveform, reference)
            loss = loss + args.stft_loss_weight * stft_loss
            logs["stft"] = stft_loss.detach().item()
        if args.gan_weight > 0 and step >= args.discriminator_start_step:
            logs.update(
                discriminators_update(accelerator, discriminators, optimizer_d, scheduler_d, reference, waveform,
                                      args.max_grad_norm)
            )  # fmt: skip
        if args.gan_weight > 0 and step >= args.gan_start_step:
            adversarial, matching = generator_adversarial_losses(accelerator, discriminators, reference, waveform)
            loss = loss + args.gan_weight * (adversarial + args.feature_matching_weight * matching)
            logs["g_loss"], logs["fm_loss"] = adversarial.detach().item(), matching.detach().item()
        backward_and_step(accelerator, loss, vocoder.parameters(), optimizer_g, scheduler_g, args.max_grad_norm)
        logs["loss"] = loss.detach().item()
        return logs

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [vocoder, mpd, mrd], max_train_steps,
        steps_per_epoch, global_step, generator,
    )  # fmt: skip

    accelerator.wait_for_everyone()
    output = args.output_dir
    if accelerator.is_main_process:
        trained = unwrap_model(accelerator, vocoder)
        atomic_save_pretrained(trained, os.path.join(args.output_dir, "vocoder"))
        for name, discriminator in discriminators.items():
            atomic_save_pretrained(unwrap_model(accelerator, discriminator), os.path.join(args.output_dir, name))
        if is_pipeline_folder(args.pretrained_model_name_or_path):
            card = model_card(args, "train_vocoder.py", ["vocoder"], args.pretrained_model_name_or_path)
            output = save_trained_pipeline(
                args.pretrained_model_name_or_path,
                os.path.join(args.output_dir, "pipeline"),
                {"vocoder": trained},
                card,
            )
    finish_training(accelerator, args, "train_vocoder.py", output, ["vocoder"], args.pretrained_model_name_or_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"global_step": global_step, "history": history}


if __name__ == "__main__":
    main(parse_args())
