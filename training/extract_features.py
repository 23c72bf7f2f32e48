#!/usr/bin/env python
"""Cache the inputs of transformer training: MelVAE posteriors, T5 text features, CLIP and Synchformer features.

One safetensors file per item (a clip, a 10-second segment, a joined or augmented clip; see
`foley_toolkit.data.FoleyClipDataset`) plus ``index.jsonl``. Each process takes every ``num_processes``-th item;
finished items are skipped, so an interrupted run continues where it stopped (files are written under a temporary
name and renamed, never left half-written). An item whose media cannot be read or whose features hold NaN/Inf
stops the run naming the item and the file, or with ``--skip_bad_items`` is logged, counted (in the returned
summary and ``extraction_summary.json``) and left out of ``index.jsonl``.

    accelerate launch training/extract_features.py --pretrained_model_name_or_path my-pipeline --data_dir clips/ \
        --output_dir features/ --segment_seconds 10 --concat_short --num_augmented_clips 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from foley_toolkit.training import (
    BAD_ITEMS_KEY,
    RunHealth,
    add_dataset_source_args,
    add_pretrained_model_args,
    atomic_output,
    atomic_write_text,
    build_clip_dataset,
    check_output_dir,
    dataset_report,
    guard_dataset,
    non_finite_tensors,
)

logger = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SUMMARY_NAME = "extraction_summary.json"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Cache VAE latents, T5, CLIP and Synchformer features for training.")
    add_pretrained_model_args(parser, "KlingFoleyPipeline folder with the encoders and the VAE.")
    parser.add_argument("--vae", type=str, default=None, help="MelVAE folder (overrides the pipeline's).")
    parser.add_argument("--tokenizer", type=str, default=None, help="T5 tokenizer folder (overrides the pipeline's).")
    parser.add_argument("--text_encoder", type=str, default=None, help="T5 encoder folder (overrides the pipeline's).")
    parser.add_argument(
        "--vision_encoder", type=str, default=None, help="CLIP vision folder (overrides the pipeline's)."
    )
    parser.add_argument("--sync_encoder", type=str, default=None, help="Synchformer folder (overrides the pipeline's).")
    add_dataset_source_args(parser)
    parser.add_argument("--output_dir", type=str, required=True, help="Where the feature files and index.jsonl go.")
    parser.add_argument(
        "--segment_seconds",
        type=float,
        default=10.0,
        help="Cut clips into segments of this length (<= 0: whole clips).",
    )
    parser.add_argument("--min_seconds", type=float, default=1.0, help="Drop items shorter than this.")
    parser.add_argument(
        "--concat_short", action="store_true", help="Join clips shorter than a segment into full segments."
    )
    parser.add_argument(
        "--num_augmented_clips", type=int, default=0, help="Temporally augmented multi-event clips to add."
    )
    parser.add_argument("--max_events", type=int, default=3, help="Most single-event clips per augmented clip.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the segment plan and augmentation.")
    parser.add_argument("--no_video", action="store_true", help="Skip CLIP/Synchformer (text-audio data only).")
    parser.add_argument("--stereo_mel", action="store_true", help="Also store the left/right log-mels (Mono2Stereo).")
    parser.add_argument("--max_sequence_length", type=int, default=128, help="T5 tokens per caption.")
    parser.add_argument(
        "--feature_dtype", type=str, default="float32", choices=sorted(DTYPES), help="dtype of stored features."
    )
    parser.add_argument(
        "--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Autocast of the encoders."
    )
    parser.add_argument("--skip_bad_items", action="store_true",
                        help="Skip (log, count) items whose media cannot be read or whose features hold NaN/Inf.")  # fmt: skip
    args = parser.parse_args(input_args)
    if (args.data_dir is None) == (args.hf_dataset is None):
        raise ValueError("Pass exactly one of `--data_dir` and `--hf_dataset`.")
    if args.pretrained_model_name_or_path is None and args.vae is None:
        raise ValueError(
            "Pass `--pretrained_model_name_or_path` (a pipeline folder) or the component folders (at least `--vae`)."
        )
    if args.segment_seconds is not None and args.segment_seconds <= 0:
        args.segment_seconds = None
    return args


def load_encoders(args: argparse.Namespace, need_text: bool, need_video: bool):
    """A `KlingFoleyPipeline` holding only what extraction needs (tokenizer, encoders, VAE; no transformer or vocoder),
    so that its `encode_prompt` / `encode_video` compute features exactly as generation does."""
    from transformers import (
        AutoTokenizer,
        CLIPVisionModelWithProjection,
        T5EncoderModel,
    )

    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder
    from foley_toolkit.pipelines import KlingFoleyPipeline

    base = args.pretrained_model_name_or_path

    def component(name, loader, needed):
        folder = getattr(args, name)
        if not needed:
            return None
        if folder is None and base is not None:
            folder = os.path.join(base, name)
        if folder is None or not os.path.isdir(folder):
            raise FileNotFoundError(
                f"No `{name}` folder: pass `--{name}` or a `--pretrained_model_name_or_path` that contains it."
            )
        return loader(folder)

    components = {
        "vae": component("vae", MelVAE.from_pretrained, True),
        "tokenizer": component("tokenizer", AutoTokenizer.from_pretrained, need_text),
        "text_encoder": component("text_encoder", T5EncoderModel.from_pretrained, need_text),
        "vision_encoder": component("vision_encoder", CLIPVisionModelWithProjection.from_pretrained, need_video),
        "sync_encoder": component("sync_encoder", SynchformerEncoder.from_pretrained, need_video),
    }
    pipe = KlingFoleyPipeline(transformer=None, scheduler=None, vocoder=None, **components)
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    return pipe


def build_dataset(args: argparse.Namespace):
    return build_clip_dataset(
        args,
        segment_seconds=args.segment_seconds,
        min_seconds=args.min_seconds,
        concat_short=args.concat_short,
        num_augmented_clips=args.num_augmented_clips,
        max_events=args.max_events,
        load_video=not args.no_video,
        mono=False,  # stereo kept for --stereo_mel; the VAE sees the mono mix
    )


@torch.no_grad()
def extract_item(pipe, example: dict, args: argparse.Namespace, device: torch.device) -> tuple[dict, dict]:
    """Features of one dataset item -> `(tensors, metadata)` for its safetensors file."""
    from foley_toolkit.models.mono2stereo import stereo_mel_targets
    from foley_toolkit.video_processor import VideoInput

    dtype = DTYPES[args.feature_dtype]
    audio = example["audio"].to(device)  # (channels, samples)
    posterior = pipe.vae.encode(audio.mean(0, keepdim=True)).latent_dist
    tensors = {
        "latents_mean": posterior.mean[0].float().contiguous(),
        "latents_std": posterior.std[0].float().contiguous(),
    }
    has_text = bool(example["has_text"])
    if has_text:
        embeds, mask, _, _ = pipe.encode_prompt(
            example["caption"], device=device, do_classifier_free_guidance=False,
            max_sequence_length=args.max_sequence_length,
        )  # fmt: skip
        # Store only the real tokens: padding is re-added (and masked) per batch.
        num_tokens = max(int(mask[0].sum()), 1)
        tensors["text_embeds"] = embeds[0, :num_tokens].to(dtype).contiguous()
        tensors["text_mask"] = mask[0, :num_tokens].to(torch.int8).contiguous()
    has_video = bool(example["has_video"]) and "clip_frames" in example
    if has_video:
        video = VideoInput(example["clip_frames"], example["sync_frames"], float(example["duration"]), fps=0.0)
        clip_features, sync_features, _ = pipe.encode_video(video, device=device, duration=float(example["duration"]))
        tensors["clip_features"] = clip_features[0].to(dtype).contiguous()
        tensors["sync_features"] = sync_features[0].to(dtype).contiguous()
    if args.stereo_mel:
        stereo = audio if audio.shape[0] == 2 else audio.expand(2, -1)
        _, left, right = stereo_mel_targets(stereo.unsqueeze(0), pipe.vae.log_mel)
        tensors["stereo_mel"] = torch.stack([left[0], right[0]]).float().contiguous()
    metadata = {
        "id": example["id"],
        "caption": example["caption"],
        "duration": float(example["duration"]),
        "seconds_start": float(example["seconds_start"]),
        "latent_frames": int(tensors["latents_mean"].shape[-1]),
        "has_video": has_video,
        "has_text": has_text,
    }
    return {k: v.cpu() for k, v in tensors.items()}, metadata


def write_index(output_dir: Path, file_names: list[str]) -> int:
    """``index.jsonl`` from the metadata stored in each feature file's header (in dataset order); items without a
    file (skipped as bad) are left out."""
    from foley_toolkit.data import FEATURE_INDEX_NAME

    entries = []
    for name in file_names:
        if not (output_dir / name).is_file():
            continue
        with safe_open(str(output_dir / name), framework="pt") as f:
            header = f.metadata()
        entry = json.loads(header["foley_toolkit"])
        entries.append({"file": name, **entry})
    atomic_write_text(output_dir / FEATURE_INDEX_NAME, "".join(json.dumps(entry) + "\n" for entry in entries))
    return len(entries)


def main(args: argparse.Namespace) -> dict:
    from foley_toolkit.data import feature_file_name

    output_dir = check_output_dir(args.output_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)

    dataset = guard_dataset(build_dataset(args), args)
    file_names = [feature_file_name(item.id) for item in dataset.items]
    if len(set(file_names)) != len(file_names):
        raise ValueError("Two items map to the same feature file name; give the clips unique `id`s / file names.")
    need_video = not args.no_video and any(item.has_video for item in dataset.items)
    need_text = any(item.caption.strip() for item in dataset.items)
    pipe = load_encoders(args, need_text=need_text, need_video=need_video)
    pipe.to(accelerator.device)

    # Each process takes every num_processes-th item; finished files are skipped (resumable).
    my_indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    todo = [i for i in my_indices if not (output_dir / file_names[i]).is_file()]
    logger.info(
        f"{len(dataset)} items, {accelerator.num_processes} processes; this process: {len(my_indices)} items, "
        f"{len(my_indices) - len(todo)} already done.",
        main_process_only=False,
    )
    health = RunHealth()
    num_extracted = 0
    for index in tqdm(todo, desc="features", disable=not accelerator.is_local_main_process):
        example = dataset[index]  # a bad-item record under --skip_bad_items, else raises naming the item
        if BAD_ITEMS_KEY in example:
            health.add_bad_items(example[BAD_ITEMS_KEY])
            continue
        try:
            with accelerator.autocast():
                tensors, metadata = extract_item(pipe, example, args, accelerator.device)
        except Exception as error:  # e.g. a video too short for the sync encoder's window
            health.add_bad_items([dataset.check(index, error=error)])
            continue
        bad = non_finite_tensors(tensors)
        if bad:  # never cache NaN/Inf: one such item poisons every later checkpoint of transformer training
            health.add_bad_items([dataset.check(index, example={name: tensors[name] for name in bad})])
            continue
        with atomic_output(output_dir / file_names[index]) as tmp:
            save_file(tensors, tmp, metadata={"foley_toolkit": json.dumps(metadata)})
        num_extracted += 1

    accelerator.wait_for_everyone()
    bad_items, _ = health.gathered(accelerator)
    totals = torch.tensor([float(len(todo)), float(num_extracted)], device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    if totals[0] > 0 and totals[1] == 0:
        # --skip_bad_items must not turn a broken setup into an empty cache that "completed".
        reasons = sorted({record["reason"] for record in bad_items})[:3]
        raise ValueError(f"Every item to extract was bad ({len(bad_items)} skipped): {reasons}")
    num_indexed = 0
    summary = {"num_items": len(dataset), "num_extracted": num_extracted, "num_bad_items": len(bad_items),
               "bad_items": bad_items, **dataset_report(dataset)}  # fmt: skip
    if accelerator.is_main_process:
        num_indexed = write_index(output_dir, file_names)
        summary["num_indexed"] = num_indexed
        atomic_write_text(output_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        if bad_items:
            logger.warning(f"Skipped {len(bad_items)} bad items (see {output_dir / SUMMARY_NAME}).")
        logger.info(f"Wrote {num_indexed} items to {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**summary, "num_indexed": num_indexed}


if __name__ == "__main__":
    main(parse_args())
