#!/usr/bin/env python
"""Train `Mono2Stereo` (paper 4.6) on stereo recordings: from the mono mix's log-mel, predict the left and right
log-mels (the module predicts their log ratios to the mono mel), optionally conditioned on the clip's CLIP features.

Video features come from the cache of ``extract_features.py`` (``--feature_dir``; build it from the same data with
the same ``--segment_seconds``, so item ids match); the crop's span of CLIP frames is cut out for each example.
Items without cached video features, and ``--video_dropout`` of the others, use the module's null embedding.

``--mel_source vae`` feeds the MelVAE reconstruction of the mono mel, which is what the pipeline gives Mono2Stereo.

Started from a pipeline folder (``--pretrained_model_name_or_path``), the script also writes ``output_dir/pipeline``:
that pipeline with the trained Mono2Stereo, saved with ``save_pretrained`` and a fresh model card.

    accelerate launch training/train_mono2stereo.py --pretrained_model_name_or_path my-pipeline \
        --data_dir stereo_clips/ --feature_dir features/ --output_dir runs/m2s --crop_seconds 4 --max_train_steps 50000
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from accelerate.logging import get_logger

from foley_toolkit.audio_utils import CLIP_FRAME_RATE, num_frames_at_rate
from foley_toolkit.training import (
    BadItemCollate,
    add_audio_data_args,
    add_pretrained_model_args,
    add_training_args,
    atomic_save_pretrained,
    backward_and_step,
    build_clip_dataset,
    build_lr_scheduler,
    build_optimizer,
    check_not_sharded,
    condition_dropout_masks,
    finish_training,
    guard_dataset,
    init_trackers,
    is_pipeline_folder,
    log_run_summary,
    make_generator,
    model_card,
    mono2stereo_loss,
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
    parser = argparse.ArgumentParser(description="Mono2Stereo training on stereo clips.")
    group = parser.add_argument_group("models")
    add_pretrained_model_args(
        group,
        "Pipeline folder: start from its mono2stereo/ (and use its vae/), and write output_dir/pipeline, this pipeline "
        "with the new Mono2Stereo.",
    )
    group.add_argument("--mono2stereo", type=str, default=None, help="Mono2Stereo folder to start from.")
    group.add_argument(
        "--mono2stereo_config", type=str, default=None, help="Train from scratch: Mono2Stereo config JSON."
    )
    group.add_argument(
        "--vae", type=str, default=None, help="MelVAE folder for --mel_source vae (overrides the pipeline's)."
    )
    group.add_argument("--mel_source", type=str, default="ground_truth", choices=["ground_truth", "vae"],
                       help="Mono input: the mel of the mono mix, or its MelVAE reconstruction.")  # fmt: skip
    group.add_argument("--feature_dir", type=str, default=None, help="Feature cache with CLIP features (optional).")
    group.add_argument("--video_dropout", type=float, default=0.1, help="Probability of the null video embedding.")
    add_audio_data_args(parser, default_crop_seconds=2.0)
    add_training_args(parser, default_learning_rate=1e-4, default_lr_scheduler="constant")
    return parser.parse_args(input_args)


class StereoCropDataset(torch.utils.data.Dataset):
    """Stereo crops of a `FoleyClipDataset` plus, when cached, the CLIP features of the crop's time span."""

    def __init__(self, clips, feature_dir: str | None, clip_frame_rate: float = CLIP_FRAME_RATE):
        self.clips = clips
        self.clip_frame_rate = clip_frame_rate
        self.feature_files: dict[str, Path] = {}
        if feature_dir is not None:
            from foley_toolkit.data import FEATURE_INDEX_NAME

            index = Path(feature_dir) / FEATURE_INDEX_NAME
            if not index.is_file():
                raise FileNotFoundError(f"`--feature_dir` {feature_dir!r} has no {FEATURE_INDEX_NAME}.")
            with open(index, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        entry = json.loads(line)
                        if entry["has_video"]:
                            self.feature_files[entry["id"]] = Path(feature_dir) / entry["file"]

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        from safetensors import safe_open

        example = self.clips[index]
        path = self.feature_files.get(example["id"])
        if path is not None:
            with safe_open(str(path), framework="pt") as f:
                features = f.get_tensor("clip_features").float()
            start = num_frames_at_rate(example["crop_start"], self.clip_frame_rate)
            length = max(1, num_frames_at_rate(self.clips.crop_seconds, self.clip_frame_rate))
            window = features[start : start + length]
            if window.shape[0] == 0:
                window = features[-1:]
            if window.shape[0] < length:  # crop ran past the last frame: repeat it
                window = torch.cat([window, window[-1:].expand(length - window.shape[0], -1)])
            example["clip_features"] = window
        return example


def collate_stereo(examples: list[dict]) -> dict:
    """Audio crops batched by `collate_audio_crops`, plus ``has_video`` `(batch,)` and ``clip_features``
    `(batch, clip_frames, clip_dim)` (zeros for clips without video; `None` when no clip has video)."""
    from foley_toolkit.data import collate_audio_crops

    batch = collate_audio_crops(examples)
    has_video = torch.tensor(["clip_features" in e for e in examples])
    batch["has_video"] = has_video
    batch["clip_features"] = None
    if has_video.any():
        reference = next(e["clip_features"] for e in examples if "clip_features" in e)
        batch["clip_features"] = torch.stack([e.get("clip_features", torch.zeros_like(reference)) for e in examples])
    return batch


def load_mono2stereo(args: argparse.Namespace):
    """The Mono2Stereo to train: from ``--mono2stereo_config``, else ``--mono2stereo`` / the pipeline's folder, else
    a default-size new one."""
    from foley_toolkit.models.mono2stereo import Mono2Stereo

    if args.mono2stereo_config is not None:
        with open(args.mono2stereo_config, encoding="utf-8") as f:
            return Mono2Stereo.from_config(json.load(f))
    pretrained = args.pretrained_model_name_or_path
    folder = args.mono2stereo or (os.path.join(pretrained, "mono2stereo") if pretrained else None)
    if folder is not None and os.path.isdir(folder):
        return Mono2Stereo.from_pretrained(folder)
    return Mono2Stereo()


def main(args: argparse.Namespace) -> dict:
    from foley_toolkit.data import LengthGroupedBatchSampler
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram, MelVAE
    from foley_toolkit.models.mono2stereo import stereo_mel_targets

    accelerator = setup_accelerator(args, find_unused_parameters=True)
    check_not_sharded(accelerator, "train_mono2stereo.py")
    generator = make_generator(accelerator, args.seed)

    model = load_mono2stereo(args).train()
    vae = None
    if args.mel_source == "vae":
        pretrained = args.pretrained_model_name_or_path
        folder = args.vae or (os.path.join(pretrained, "vae") if pretrained else None)
        if folder is None:
            raise ValueError("`--mel_source vae` needs `--vae` or `--pretrained_model_name_or_path`.")
        vae = MelVAE.from_pretrained(folder).requires_grad_(False).eval().to(accelerator.device)
    mel_transform = (vae.log_mel if vae is not None else LogMelSpectrogram()).to(accelerator.device)
    register_checkpoint_hooks(accelerator, {"mono2stereo": model})

    clips = build_clip_dataset(
        args, segment_seconds=args.segment_seconds if args.segment_seconds > 0 else None, min_seconds=args.min_seconds,
        load_video=False, mono=False, crop_seconds=args.crop_seconds,
    )  # fmt: skip
    dataset = StereoCropDataset(clips, args.feature_dir)
    if args.feature_dir is not None and model.config.video_feature_dim is None:
        raise ValueError("`--feature_dir` given, but this Mono2Stereo has `video_feature_dim=None` (audio-only).")
    sampler = LengthGroupedBatchSampler([1] * len(dataset), args.train_batch_size, shuffle=True, seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=BadItemCollate(collate_stereo),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip
    scale_learning_rates(args, accelerator)
    optimizer = build_optimizer(args, model.parameters())
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    lr_scheduler = accelerator.prepare(build_lr_scheduler(args, optimizer, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    init_trackers(accelerator, args, "train_mono2stereo")
    global_step = resume_from_checkpoint(accelerator, args, generator)

    def training_step(batch: dict, step: int) -> dict:
        with torch.no_grad():
            mono_mel, left_target, right_target = stereo_mel_targets(batch["audio"], mel_transform)
            if vae is not None:
                latents = vae.encode(mono_mel).latent_dist.mode()
                mono_mel = vae.decode(latents).sample[..., : mono_mel.shape[-1]]
        video_features, drop_video = None, None
        if batch["clip_features"] is not None:
            video_features = batch["clip_features"]
            _, drop = condition_dropout_masks(
                mono_mel.shape[0], 0.0, args.video_dropout, has_video=batch["has_video"].cpu(), generator=generator
            )
            drop_video = drop.to(accelerator.device)
        output = model(mono_mel, video_features=video_features, drop_video=drop_video)
        loss = mono2stereo_loss(output.left_mel, output.right_mel, left_target, right_target)
        backward_and_step(accelerator, loss, model.parameters(), optimizer, lr_scheduler, args.max_grad_norm)
        return {"loss": loss.detach().item()}

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [model], max_train_steps, steps_per_epoch,
        global_step, generator,
    )  # fmt: skip

    accelerator.wait_for_everyone()
    output = args.output_dir
    if accelerator.is_main_process:
        trained = unwrap_model(accelerator, model)
        atomic_save_pretrained(trained, os.path.join(args.output_dir, "mono2stereo"))
        if is_pipeline_folder(args.pretrained_model_name_or_path):
            card = model_card(args, "train_mono2stereo.py", ["mono2stereo"], args.pretrained_model_name_or_path)
            output = save_trained_pipeline(
                args.pretrained_model_name_or_path, os.path.join(args.output_dir, "pipeline"), {"mono2stereo": trained},
                card,
            )  # fmt: skip
    finish_training(accelerator, args, "train_mono2stereo.py", output, ["mono2stereo"],
                    args.pretrained_model_name_or_path)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"global_step": global_step, "history": history}


if __name__ == "__main__":
    main(parse_args())
