"""Last stage of `training/recipes/demo.sh`: ship the trained demo pipeline, measure it, write its model card.

1. generates audio for every held-out synthetic clip (seeds never used in training) from the video alone;
2. scores it with `foley_toolkit.evaluation.sync_metrics` (the library behind `foley-toolkit eval-sync`):
   onset F1 within +-80 ms, mean absolute offset, the shuffled-video control, stereo pan sign;
3. saves the pipeline (safetensors) to `--output_dir` with a `README.md` model card made with
   `huggingface_hub.ModelCard`, and the numbers in `eval_sync.json`;
4. writes the bundled demo video `examples/assets/demo.mp4` (a synthetic clip with its own seed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.audio_utils import save_audio
from foley_toolkit.evaluation.sync_metrics import evaluate_sync_folder, load_events
from foley_toolkit.synthetic import generate_clip, write_clip

DEMO_VIDEO_SEED = 7  # the bundled demo clip: neither a training (1) nor a held-out (2) dataset seed
MAX_SHIPPED_MB = 30.0


def generate_heldout(pipeline: KlingFoleyPipeline, heldout_dir: Path, out_dir: Path, steps: int, guidance: float) -> float:
    """Audio for every held-out clip, from its video alone; returns seconds per second of audio."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total_audio, start = 0.0, time.perf_counter()
    for record in load_events(heldout_dir / "metadata.jsonl"):
        target = out_dir / (Path(record["file_name"]).stem + ".wav")
        if target.exists():
            continue
        generator = torch.Generator().manual_seed(0)
        output = pipeline(
            video=str(heldout_dir / record["file_name"]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
        )
        save_audio(target, output.audios[0], output.sample_rate)
        total_audio += output.audios.shape[-1] / output.sample_rate
    return (time.perf_counter() - start) / max(total_audio, 1e-9)


def folder_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_model_card(output_dir: Path, report: dict, settings: dict) -> None:
    def fmt(value, spec=".3f"):
        return "n/a" if value is None else format(value, spec)

    card_data = ModelCardData(
        license="apache-2.0",
        library_name="foley_toolkit",
        tags=["video-to-audio", "foley", "kling-foley", "synthetic-data", "demo"],
        pipeline_tag="text-to-audio",
    )
    content = f"""---
{card_data.to_yaml()}
---

# Kling-Foley demo pipeline (synthetic data, {settings['size_mb']:.1f} MB)

**This is a demo, trained only on synthetic data.** It is not Kling-Foley: no official weights exist. It
is a very small `KlingFoleyPipeline` that the project trains from nothing on 2 CPU cores with its own
scripts (`training/recipes/demo.sh`), so that a new user's first command produces a video whose sound
lands on what they see. It knows four synthetic events and nothing else:

| event | picture | sound |
|---|---|---|
| bounce | a red ball touches the floor | wooden knock |
| collide | a blue and an orange block meet | metallic clang |
| flash | a white flash | noise burst |
| beep | a green lamp lights up | 1 kHz beep |

Real videos will get noise-like sound from it. Use it to try the API, the CLI and the training scripts.

## How it was trained

`bash training/recipes/demo.sh` (fixed seeds, about {settings['recipe_minutes']} minutes on 2 CPU cores):

1. `foley-toolkit make-synthetic`: {settings['train_clips']} training clips (seed 1, 2-12 s, 12-60 fps, 96x96,
   stereo 44.1 kHz panned by the object's position) and {settings['heldout_clips']} held-out clips (seed 2).
2. `training/train_vae.py`: MelVAE (16 latent channels, 43 Hz), the four stages of Algorithm 2.
3. `training/train_vocoder.py`: BigVGAN-v2 vocoder (diffusers `MMAudioVocoder`, 4 upsampling stages of
   product 512) on ground-truth mels, mel + multi-resolution STFT losses.
4. `training/extract_features.py` then `training/train_transformer.py`: `FoleyMMDiTTransformer`
   (hidden 128, 2 joint + 2 single blocks) with flow matching, logit-normal timesteps, text/video dropout
   0.1, InverseLR, EMA.
5. `training/train_mono2stereo.py`: Mono2Stereo conditioned on the CLIP frame features.

The conditioning encoders (T5, CLIP vision, Synchformer) are small (64 wide, 2 layers) and frozen at a
random initialisation: the synthetic world is four event classes on a plain background, so fixed random
features of the frames (brightness, object positions) and of the caption words already tell the
transformer what it needs, and pre-training real encoders is outside what 2 CPU cores can do in a demo.
The vision and sync encoders are drawn with variance-growing weights (`rescale_random_encoder` in
`training/recipes/build_demo_base.py`): at the usual ViT initialisation their features hardly change
from frame to frame, and a first run trained on those learned to ignore the video (onset F1 0.02).
For real use, load T5-Base, MetaCLIP and Synchformer weights.

## Measured on held-out clips

`python training/recipes/finish_demo.py ...` (the last stage of the recipe), equivalently
`foley-toolkit eval-sync --audio-dir {settings['generated_dir']} --events {settings['heldout_events']}` on audio
generated from the {report['num_clips']} held-out videos alone (no prompt), {settings['steps']} Euler steps,
guidance {settings['guidance']}:

| metric | value | target |
|---|---|---|
| onset F1 within +-80 ms | {fmt(report.get('f1'))} | >= 0.8 |
| precision / recall | {fmt(report.get('precision'))} / {fmt(report.get('recall'))} | |
| mean absolute offset | {fmt(report.get('mean_abs_offset_ms'), '.1f')} ms | <= 40 ms |
| shuffled-video control F1 | {fmt(report.get('shuffled_f1'))} | <= 0.3 |
| pan sign correct (moving events) | {fmt(report.get('pan_accuracy'))} | >= 0.8 |

Events: {report.get('num_events')}, detected onsets: {report.get('num_detected')}. Generation speed on this
machine: {settings['seconds_per_audio_second']:.2f} s per second of audio.

## Use

```python
from foley_toolkit import KlingFoleyPipeline
pipe = KlingFoleyPipeline.from_pretrained("checkpoints/kling-foley-demo")
audio = pipe(video="examples/assets/demo.mp4").audios   # (1, 2, samples), 44.1 kHz
```
"""
    ModelCard(content).save(output_dir / "README.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", required=True, help="Trained pipeline folder (last stage of the recipe).")
    parser.add_argument("--heldout", required=True, help="Held-out synthetic clips (metadata.jsonl with events).")
    parser.add_argument("--work_dir", required=True, help="Recipe work folder (generated audio goes here).")
    parser.add_argument("--output_dir", required=True, help="Where the shipped pipeline goes.")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=4.5)
    parser.add_argument("--demo_video", default="examples/assets/demo.mp4")
    args = parser.parse_args()

    work_dir, heldout, output_dir = Path(args.work_dir), Path(args.heldout), Path(args.output_dir)
    pipeline = KlingFoleyPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)

    generated = work_dir / "heldout_generated"
    speed = generate_heldout(pipeline, heldout, generated, args.num_inference_steps, args.guidance_scale)
    report = evaluate_sync_folder(generated, heldout / "metadata.jsonl")
    print(report.format_table())
    summary = report.to_dict()

    if output_dir.exists():
        shutil.rmtree(output_dir)
    pipeline.save_pretrained(output_dir)
    size_mb = folder_megabytes(output_dir)
    if size_mb > MAX_SHIPPED_MB:
        raise ValueError(f"the shipped pipeline is {size_mb:.1f} MB, more than {MAX_SHIPPED_MB} MB")
    (output_dir / "eval_sync.json").write_text(json.dumps(report.to_dict(with_clips=True), indent=2) + "\n")

    recipe_log = work_dir / "recipe_seconds.txt"
    settings = {
        "size_mb": size_mb,
        "recipe_minutes": round(float(recipe_log.read_text()) / 60) if recipe_log.exists() else "n/a",
        "train_clips": sum(1 for _ in open(work_dir / "data" / "train" / "metadata.jsonl")),
        "heldout_clips": summary["num_clips"],
        "generated_dir": os.fspath(generated),
        "heldout_events": os.fspath(heldout / "metadata.jsonl"),
        "steps": args.num_inference_steps,
        "guidance": args.guidance_scale,
        "seconds_per_audio_second": speed,
    }
    write_model_card(output_dir, summary, settings)

    demo_video = Path(args.demo_video)
    demo_video.parent.mkdir(parents=True, exist_ok=True)
    clip = generate_clip(DEMO_VIDEO_SEED, duration=6.0, fps=25)
    write_clip(clip, demo_video)
    print(json.dumps({"eval_sync": summary, "size_mb": round(size_mb, 2), "output_dir": os.fspath(output_dir)}, indent=2))


if __name__ == "__main__":
    main()
