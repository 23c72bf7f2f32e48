"""Train a tiny codec (MelVAE + BigVGAN-v2 vocoder) on a folder of recordings in a few CPU minutes, then save it in
the diffusers layout `eval-codec` reads (`OUT/vae`, `OUT/vocoder`).

A smoke-scale run of the real recipe, not a useful codec: the MelVAE follows the paper's Algorithm 2 (mel MSE ->
margin-KL ramp -> hinge GAN + R1 ramp -> frozen encoder), compressed into `--vae-steps`; the vocoder learns from
ground-truth mels with a mel L1 + multi-resolution STFT loss (no GAN). Full-size training lives in `training/`.

    python examples/train_tiny_codec.py --audio-dir path/to/train_audio --output-dir outputs/tiny_codec
    foley-toolkit eval-codec --model outputs/tiny_codec --audio-dir path/to/eval_audio
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch
import torch.nn.functional as F

from foley_toolkit import LogMelSpectrogram, MelDiscriminator, MelVAE, build_vocoder, load_audio
from foley_toolkit.commands.eval_codec import find_audio_files
from foley_toolkit.training_utils import (
    codec_loss_weights,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    latent_statistics,
    margin_kl_loss,
    mel_mse_loss,
    r1_gradient_penalty,
    set_codec_encoder_trainable,
)

TINY_VAE_CONFIG = dict(latent_channels=40, block_out_channels=(64, 128), layers_per_block=2, kernel_size=5)
TINY_DISCRIMINATOR_CONFIG = dict(num_scales=2, channels=(16, 32, 64))
SMALL_VOCODER_CONFIG = dict(
    num_mels=128,
    upsample_initial_channel=64,
    upsample_rates=[8, 4, 4, 4],
    upsample_kernel_sizes=[16, 8, 8, 8],
    resblock_kernel_sizes=[3],
    resblock_dilation_sizes=[[1, 3, 5]],
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", required=True, help="Training recordings (any format load_audio reads).")
    parser.add_argument("--output-dir", required=True, help="Where vae/ and vocoder/ are saved.")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vocoder-steps", type=int, default=600)
    parser.add_argument("--max-minutes", type=float, default=6.0, help="Time limit per model (stops early).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vae-segment-frames", type=int, default=43, help="Latent frames per VAE crop (43 = 1 s).")
    parser.add_argument("--vocoder-segment-frames", type=int, default=32, help="Mel frames per vocoder crop.")
    parser.add_argument("--kl-upper", type=float, default=1e-3)
    parser.add_argument("--kl-margin", type=float, default=0.1, help="Margin delta of eq. 2, nats per latent element.")
    parser.add_argument("--gan-upper", type=float, default=0.05)
    parser.add_argument("--r1-weight", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def random_crops(
    clips: list[torch.Tensor], batch_size: int, num_samples: int, generator: random.Random
) -> torch.Tensor:
    """`(batch, num_samples)` random crops (zero-padded when a clip is shorter)."""
    crops = []
    for _ in range(batch_size):
        clip = clips[generator.randrange(len(clips))]
        if clip.shape[-1] > num_samples:
            start = generator.randrange(clip.shape[-1] - num_samples)
            clip = clip[start : start + num_samples]
        crops.append(F.pad(clip, (0, num_samples - clip.shape[-1])))
    return torch.stack(crops)


def train_vae(args, clips, rng) -> MelVAE:
    vae = MelVAE(**TINY_VAE_CONFIG).train()
    discriminator = MelDiscriminator(**TINY_DISCRIMINATOR_CONFIG).train()
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, betas=(0.8, 0.99))
    disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=2e-4, betas=(0.8, 0.99))
    # Algorithm 2 compressed into the step budget: 30% MSE only, 20% KL ramp, 35% GAN ramp, 15% decoder refinement.
    bounds = (int(0.3 * args.vae_steps), int(0.5 * args.vae_steps), int(0.85 * args.vae_steps))
    num_samples = args.vae_segment_frames * vae.samples_per_latent_frame
    start, frozen = time.perf_counter(), False
    for step in range(1, args.vae_steps + 1):
        weights = codec_loss_weights(step, *bounds, kl_upper=args.kl_upper, gan_upper=args.gan_upper)
        if weights.freeze_encoder and not frozen:
            set_codec_encoder_trainable(vae, False)
            frozen = True
        mel = vae.mel_spectrogram(random_crops(clips, args.batch_size, num_samples, rng))
        posterior = vae.encode(mel).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample[..., : mel.shape[-1]]
        mse = mel_mse_loss(reconstruction, mel)
        kl = margin_kl_loss(posterior, margin=args.kl_margin)
        loss = weights.mse * mse + weights.kl * kl
        if weights.gan > 0:
            loss = loss + weights.gan * generator_adversarial_loss(discriminator(reconstruction))
        vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        vae_optimizer.step()
        if weights.gan > 0:  # eq. 5: gamma_step * L_adv + lambda_R1 * R1
            real = mel.detach().requires_grad_(True)
            real_logits = discriminator(real)
            d_loss = weights.gan * hinge_discriminator_loss(real_logits, discriminator(reconstruction.detach()))
            d_loss = d_loss + args.r1_weight * r1_gradient_penalty(real_logits, real)
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_optimizer.step()
        if step % 100 == 0 or step == 1:
            print(
                f"vae step {step:5d} stage {weights.stage} mse {mse.item():.4f} margin_kl {kl.item():.3f} "
                f"w_kl {weights.kl:.2e} w_gan {weights.gan:.3f} {time.perf_counter() - start:.0f}s",
                flush=True,
            )
        if time.perf_counter() - start > 60 * args.max_minutes:
            print(f"vae: time limit reached at step {step}")
            break
    vae.eval().requires_grad_(True)
    # Latent statistics over every training clip, stored in the config (what the transformer trains on).
    with torch.no_grad():
        latents = [vae.encode(clip[None]).latent_dist.mean for clip in clips if clip.shape[-1] >= 2048]
    vae.set_latent_statistics(*latent_statistics(latents))
    return vae


def stft_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 log magnitude, averaged over three resolutions."""
    losses = []
    for n_fft, hop in ((512, 128), (1024, 256), (2048, 512)):
        window = torch.hann_window(n_fft)
        pred = torch.stft(prediction, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        ref = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        losses.append(torch.linalg.norm(ref - pred) / torch.linalg.norm(ref) + (ref.log() - pred.log()).abs().mean())
    return torch.stack(losses).mean()


def train_vocoder(args, clips, rng):
    vocoder = build_vocoder(SMALL_VOCODER_CONFIG).train()
    mel_transform = LogMelSpectrogram()
    optimizer = torch.optim.AdamW(vocoder.parameters(), lr=1e-3, betas=(0.8, 0.99))
    num_samples = args.vocoder_segment_frames * 512
    start = time.perf_counter()
    for step in range(1, args.vocoder_steps + 1):
        waveform = random_crops(clips, args.batch_size // 2, num_samples, rng)
        mel = mel_transform(waveform)
        prediction = vocoder(mel).sample[:, 0]
        mel_l1 = (mel_transform(prediction) - mel).abs().mean()
        loss = 45.0 * mel_l1 + stft_loss(prediction, waveform)  # BigVGAN's mel weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 100.0)
        optimizer.step()
        if step % 50 == 0 or step == 1:
            print(
                f"vocoder step {step:4d} mel L1 {mel_l1.item():.4f} loss {loss.item():.3f} "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
        if time.perf_counter() - start > 60 * args.max_minutes:
            print(f"vocoder: time limit reached at step {step}")
            break
    return vocoder.eval()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    clips = [load_audio(path)[0].clamp(-1, 1) for path in find_audio_files(args.audio_dir)]
    clips = [clip for clip in clips if clip.shape[-1] >= 2048]
    print(f"{len(clips)} clips, {sum(c.shape[-1] for c in clips) / 44100:.1f} s of audio")
    vae = train_vae(args, clips, rng)
    vae.save_pretrained(os.path.join(args.output_dir, "vae"))
    vocoder = train_vocoder(args, clips, rng)
    vocoder.save_pretrained(os.path.join(args.output_dir, "vocoder"))
    with open(os.path.join(args.output_dir, "train_args.json"), "w") as handle:
        json.dump(vars(args), handle, indent=2)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
