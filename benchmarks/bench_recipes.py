"""Stage by stage, 8 s of video: this project's full-size recipe against MMAudio-S's recipe, in one harness (not a
test).

Both recipes are built from full-size modules with random weights and timed by the same code on the same machine,
stage by stage, in the same run. Each stage is the module a real call runs, at the sizes that recipe uses (this
project | MMAudio-S 44 kHz, sizes from its published configs):

- text: T5-Base encoder on a 12-token prompt (the pipeline trims padding) | MMAudio: the CLIP text tower of DFN5B
  ViT-H-14-384 (width 1024, 24 layers) on 77 tokens.
- vision: MetaCLIP ViT-bigG-14, 224 px, 64 frames (8 fps) | DFN5B ViT-H-14-384's vision tower (width 1280, 32
  layers), 384 px, 64 frames (8 fps).
- sync: Synchformer (MotionFormer ViT-B/16), 24 segments of 16 frames at 25 fps | the same network and segments.
- flow: the `small` `FoleyMMDiTTransformer`, 345 latent frames (43 Hz), 20 Euler steps, CFG as one batch-2 call per
  step | a network of MMAudio-S's shape (hidden 448, 7 heads, 4 joint + 8 audio-only blocks: the `small` preset)
  at MMAudio's lengths (250 latent frames at 31.25 Hz, 77 text tokens of width 1024, 64 CLIP tokens of width
  1024), 25 steps, CFG as two batch-1 calls per step.
- VAE decode: `MelVAE`, 345 latent frames | `MelVAE`, 250 latent frames (MMAudio's own VAE is another network;
  this stage is under 1% of either total).
- stereo: `Mono2Stereo` on the 689-frame mel | none (mono).
- vocoder: BigVGAN-v2 44 kHz 512x, both channels as one batch of 2, this project's fast path | the same network
  and path, one channel.

Method notes (say them with the numbers):
- MMAudio's own code is not run by this script (none of it is part of this repository). Its flow network is
  modelled by this project's transformer at MMAudio-S's width, depth and sequence lengths: an earlier side-by-side
  with MMAudio's real network (random weights) counted 157 GFLOP per batch-2 step of 8 s against 153 for `small`,
  so the two networks do about the same work per token. The vocoder uses this project's fast BigVGAN path for both, which favours MMAudio
  (its own BigVGAN code runs the reference forward, 1.4-2.8x slower here).
- The vision stage is timed on `--vision_frames` frames per call and scaled to the 64 frames of 8 s (frames are
  independent images); the flow stage times `--flow_steps_timed` steps (after one warm-up step) and scales to the
  recipe's step count (every step is the same computation).
- The encoders and the flow network get the modules' default attention (SDPA), the `--dtype` weights, and one
  warm-up call on the same shapes first.

    OMP_NUM_THREADS=2 python benchmarks/bench_recipes.py [--dtype fp32|bf16] [--threads 2] [--vision_frames 8]
        [--flow_steps_timed 3] [--json_out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

from foley_toolkit.audio_utils import sequence_lengths
from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE
from foley_toolkit.models.encoders.presets import (
    build_sync_encoder,
    build_text_encoder,
    build_vision_encoder,
    metaclip_bigg_14_quickgelu_config,
    synchformer_vit_b_16_config,
)
from foley_toolkit.models.mono2stereo import Mono2Stereo
from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer
from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config, build_vocoder


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SECONDS = 8.0


def dfn5b_vit_h_14_384_vision_config() -> CLIPVisionConfig:
    """DFN5B-CLIP-ViT-H-14-384's vision tower (MMAudio's CLIP): width 1280, 32 layers, 16 heads, MLP 5120, patch 14,
    384 px, GELU, projection 1024."""
    return CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=1024,
    )


def dfn5b_vit_h_14_text_config() -> CLIPTextConfig:
    """DFN5B-CLIP-ViT-H-14's text tower (MMAudio's text encoder): width 1024, 24 layers, 16 heads, 77 tokens."""
    return CLIPTextConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=1024,
    )


def cpu_name() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="Weights' dtype.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads.")
    parser.add_argument("--vision_frames", type=int, default=8, help="Frames per timed vision call (scaled to 64).")
    parser.add_argument("--flow_steps_timed", type=int, default=3, help="Timed flow steps (scaled to the recipe).")
    parser.add_argument("--json_out", default=None, help="Also write the JSON object to this file.")
    return parser.parse_args()


def clock(function: Callable[[], object], repeats: int = 1) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flow_stage(lengths: dict, text_tokens: int, text_dim: int, clip_dim: int, steps: int, cfg_batched: bool, args,
               dtype) -> dict:  # fmt: skip
    """Seconds for `steps` guided steps of a `small`-shaped transformer at these lengths and condition widths."""
    config = dict(FoleyMMDiTTransformer.preset_config("small"), text_dim=text_dim, clip_dim=clip_dim, sync_dim=768)
    model = FoleyMMDiTTransformer(**config)
    model = model.eval().to(dtype)
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    batch = 2 if cfg_batched else 1
    latents = randn(1, model.config.in_channels, lengths["audio_tokens"]).repeat(batch, 1, 1)
    condition_inputs = {
        "encoder_hidden_states": randn(batch, text_tokens, text_dim),
        "clip_features": randn(batch, lengths["clip_frames"], clip_dim),
        "sync_features": randn(batch, lengths["sync_tokens"], 768),
    }
    timestep = torch.full((batch,), 500.0)
    if cfg_batched:  # one call: sample 1 is the unconditional one
        drop = torch.tensor([False, True])
        conditions = [model.prepare_conditions(latents.shape[-1], drop_text=drop, drop_clip=drop, drop_sync=drop,
                                               **condition_inputs)]  # fmt: skip
    else:  # MMAudio: a conditional and an unconditional batch-1 call per step
        conditions = [
            model.prepare_conditions(latents.shape[-1], **condition_inputs),
            model.prepare_conditions(latents.shape[-1], drop_text=torch.tensor([True]), drop_clip=torch.tensor([True]),
                                     drop_sync=torch.tensor([True]), **condition_inputs),
        ]  # fmt: skip

    def step():
        for prepared in conditions:
            model(latents, timestep, conditions=prepared)

    per_step = clock(step, repeats=args.flow_steps_timed)
    return {"seconds": per_step * steps, "per_step_s": per_step, "steps": steps, "calls_per_step": len(conditions)}


@torch.inference_mode()
def run_recipe(name: str, args, dtype: torch.dtype, sync_seconds: float | None) -> dict:
    ours = name == "this_project"
    lengths = sequence_lengths(SECONDS)
    if not ours:  # MMAudio 44 kHz: 31.25 latent frames/s (latent_seq_len 250 for 8 s)
        lengths = dict(lengths, audio_tokens=250)
    stages = {}

    # Text
    if ours:
        text = build_text_encoder(dtype=dtype)
        ids = torch.randint(0, text.config.vocab_size, (1, 12))
        stages["text"] = {"seconds": clock(lambda: text(input_ids=ids)), "tokens": 12}
    else:
        with torch.device("cpu"):
            text = CLIPTextModel(dfn5b_vit_h_14_text_config()).eval().to(dtype)
        ids = torch.randint(0, text.config.vocab_size, (1, 77))
        stages["text"] = {"seconds": clock(lambda: text(input_ids=ids)), "tokens": 77}

    # Vision: 64 CLIP frames, timed on `vision_frames` and scaled.
    config = metaclip_bigg_14_quickgelu_config() if ours else dfn5b_vit_h_14_384_vision_config()
    vision = build_vision_encoder(config, dtype=dtype)
    size = config.image_size
    pixels = torch.randn(args.vision_frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    seconds = clock(lambda: vision(pixel_values=pixels))
    stages["vision"] = {
        "seconds": seconds * lengths["clip_frames"] / args.vision_frames,
        "frames": lengths["clip_frames"],
        "timed_frames": args.vision_frames,
        "image_size": size,
        "parameters_m": sum(p.numel() for p in vision.parameters()) / 1e6,
    }

    # Sync: the same network and segments for both recipes; timed once (first recipe) and shared.
    if sync_seconds is None:
        sync = build_sync_encoder(synchformer_vit_b_16_config(), dtype=dtype)
        frames = torch.rand(1, lengths["sync_frames"], 3, 224, 224).to(dtype) * 2 - 1
        sync_seconds = clock(lambda: sync(frames, segment_batch_size=None))
    stages["sync"] = {"seconds": sync_seconds, "segments": lengths["sync_segments"]}

    # Flow
    if ours:
        stages["flow"] = flow_stage(lengths, 12, 768, 1280, 20, True, args, dtype)
    else:
        stages["flow"] = flow_stage(lengths, 77, 1024, 1024, 25, False, args, dtype)

    # VAE decode
    vae = MelVAE().eval().to(dtype)
    z = torch.randn(1, vae.config.latent_channels, lengths["audio_tokens"]).to(dtype)
    stages["vae_decode"] = {"seconds": clock(lambda: vae.decode(z)), "latent_frames": lengths["audio_tokens"]}
    mel_frames = 2 * lengths["audio_tokens"]

    # Stereo
    if ours:
        mono2stereo = Mono2Stereo().eval().to(dtype)
        mel = torch.randn(1, 128, mel_frames).to(dtype)
        clip = torch.randn(1, lengths["clip_frames"], 1280).to(dtype)
        stages["mono2stereo"] = {"seconds": clock(lambda: mono2stereo(mel, clip))}

    # Vocoder: the project's fast BigVGAN-v2 path for both (MMAudio's own code runs the slower reference forward).
    vocoder = build_vocoder(bigvgan_v2_44khz_128band_512x_config()).eval().to(dtype)
    channels = 2 if ours else 1
    mel = (torch.randn(channels, 128, lengths["mel_frames"]) * 2 - 5).to(dtype)
    vocoder(mel[..., :16])  # warm-up on a short mel: one full 8 s call is timed
    start = time.perf_counter()
    vocoder(mel)
    stages["vocoder"] = {
        "seconds": time.perf_counter() - start,
        "channels": channels,
        "compute_dtype": str(vocoder.resolved_compute_dtype()).replace("torch.", ""),
    }

    total = sum(stage["seconds"] for stage in stages.values())
    return {"stages": stages, "total_s": total}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    result = {
        "seconds_of_video": SECONDS,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "amx_tiles": torch.cpu._is_amx_tile_supported(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    ours = run_recipe("this_project", args, dtype, None)
    theirs = run_recipe("mmaudio_s", args, dtype, ours["stages"]["sync"]["seconds"])
    result.update(this_project=ours, mmaudio_s=theirs, ratio=ours["total_s"] / theirs["total_s"])
    result["load_average_after"] = os.getloadavg()

    names = list(dict.fromkeys([*ours["stages"], *theirs["stages"]]))
    print(f"8 s of video, {args.dtype} weights, {result['threads']} threads")
    print(f"{'stage':<14}{'this project':>14}{'MMAudio-S':>12}{'ratio':>8}")
    for name in names:
        mine = ours["stages"].get(name, {}).get("seconds")
        other = theirs["stages"].get(name, {}).get("seconds")
        ratio = f"{mine / other:8.2f}" if mine is not None and other else f"{'':8}"
        mine_text = f"{mine:14.2f}" if mine is not None else f"{'-':>14}"
        other_text = f"{other:12.2f}" if other is not None else f"{'-':>12}"
        print(f"{name:<14}{mine_text}{other_text}{ratio}")
    print(f"{'total':<14}{ours['total_s']:14.2f}{theirs['total_s']:12.2f}{result['ratio']:8.2f}")
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
