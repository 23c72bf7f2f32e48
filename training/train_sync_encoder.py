#!/usr/bin/env python
"""Train the Synchformer visual encoder (`SynchformerEncoder`, the pipeline's ``sync_encoder``) with Synchformer's
own objective: classify the temporal offset between a video window and an audio window.

Each training example is one video window of ``--num_segments`` Synchformer segments (16 frames at 25 fps, stride
8: ``16 + 8 (S - 1)`` frames) and an audio window of the same length that starts ``offset`` seconds later, with
``offset = (k - K // 2) * --offset_step`` for a class ``k`` drawn uniformly from ``--num_offset_classes`` K.
`SynchformerEncoder` turns the frames into ``8 S`` tokens; `SynchformerSyncHead` (an audio conv stack over the
project's log-mel, a learned audio-visual cross-correlation and an MLP; see its docstring for why not Synchformer's
transformer head) classifies ``k`` with cross-entropy. ``--contrastive_weight`` adds Synchformer's segment-level
audio-visual InfoNCE. Both are trained; only the visual encoder goes into the pipeline.

Choices for short clips (documented defaults): Synchformer trains on 4.8 s windows with 21 offset classes over
+-2 s in 0.2 s steps. The synthetic clips are 2-12 s with an event every ~3 s, so the defaults here are 7
segments (2.56 s windows: most contain an event) and 11 classes over +-0.6 s in 0.12 s steps (3 frames at 25 fps:
coarser than the 0.083 s frame period of the 12 fps clips, so adjacent classes stay distinguishable). Offsets are
whole 25 fps frames (0.04 s = 1764 samples at 44.1 kHz), so the audio cut is exact. Clips shorter than
``window + 2 * max offset`` are skipped (both windows must lie inside the clip: padding would give the offset
away).

Decoding video is slow on a CPU: every clip is decoded once (`FoleyClipDataset`, the same frames as
``extract_features.py``), its sync frames resized to the encoder's resolution exactly as the pipeline does
(`preprocess_sync_frames`, then bilinear to ``image_size``) and kept as uint8 in memory, and with ``--cache_dir``
also as safetensors on disk for later runs. uint8 is exact at 224 px; for smaller encoders the stored frames are
within 0.5 / 127.5 of the pipeline's float frames.

    python training/train_sync_encoder.py --pretrained_model_name_or_path base-pipeline \
        --data_dir clips/ --validation_data_dir heldout/ --output_dir runs/sync \
        --train_batch_size 8 --max_train_steps 2000 --cache_dir runs/sync/frame_cache

Outputs: ``output_dir/sync_encoder`` (the trained `SynchformerEncoder`), ``output_dir/sync_head``, when started from a
pipeline folder ``output_dir/pipeline`` (that pipeline with the new sync encoder, saved with ``save_pretrained`` and a
fresh model card), and with
``--validation_data_dir`` the held-out offset accuracy in ``output_dir/validation.json``. Retrain (or
re-extract features for) the transformer after swapping the sync encoder: its sync features change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from foley_toolkit.audio_utils import SAMPLE_RATE, SYNC_FRAME_RATE, sync_window_frames
from foley_toolkit.training import (
    BadItemCollate,
    add_dataset_source_args,
    add_pretrained_model_args,
    add_training_args,
    atomic_save_pretrained,
    atomic_write_text,
    backward_and_step,
    build_clip_dataset,
    build_lr_scheduler,
    build_optimizer,
    check_not_sharded,
    describe_item,
    finish_training,
    guard_dataset,
    init_trackers,
    is_pipeline_folder,
    log_run_summary,
    make_generator,
    model_card,
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

SAMPLES_PER_SYNC_FRAME = SAMPLE_RATE // SYNC_FRAME_RATE  # 1764: a 25 fps frame is a whole number of samples
SYNC_ENCODER_PRESETS = ("synchformer_vit_b_16", "tiny")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Synchformer visual encoder training (audio-visual offset classification)."
    )
    group = parser.add_argument_group("models")
    add_pretrained_model_args(
        group,
        "Pipeline folder: start from its sync_encoder/, and write output_dir/pipeline, this pipeline with the new "
        "sync encoder.",
    )
    group.add_argument(
        "--sync_encoder",
        type=str,
        default=None,
        help="SynchformerEncoder folder to start from (overrides the pipeline's).",
    )
    group.add_argument("--sync_encoder_config", type=str, default=None,
                       help=f"Train from scratch: one of {SYNC_ENCODER_PRESETS} or a config JSON file.")  # fmt: skip
    group.add_argument("--sync_head", type=str, default=None, help="SynchformerSyncHead folder to start from.")
    group.add_argument("--head_hidden_size", type=int, default=32, help="Width of each correlation head.")
    group.add_argument("--head_heads", type=int, default=4, help="Correlation heads of the offset classifier.")
    group.add_argument("--audio_channels", type=int, default=128, help="Width of the audio conv stack.")
    group.add_argument("--audio_layers", type=int, default=3, help="Residual conv blocks of the audio branch.")
    group = parser.add_argument_group("losses")
    group.add_argument("--offset_weight", type=float, default=1.0, help="Weight of the offset classification loss.")
    group.add_argument("--contrastive_weight", type=float, default=0.0,
                       help="Weight of the segment-level audio-visual InfoNCE (Synchformer's first stage; 0: off).")  # fmt: skip
    group = parser.add_argument_group("data")
    add_dataset_source_args(group, media="videos")
    group.add_argument(
        "--segment_seconds", type=float, default=10.0, help="Longer clips are cut into segments of this length."
    )
    group.add_argument(
        "--cache_dir", type=str, default=None, help="Keep decoded frames here too (reused by later runs)."
    )
    group.add_argument("--num_segments", type=int, default=7, help="Synchformer segments per window (7: 2.56 s).")
    group.add_argument("--num_offset_classes", type=int, default=11, help="Offset classes (odd: class K // 2 is 0 s).")
    group.add_argument(
        "--offset_step", type=float, default=0.12, help="Seconds between offset classes (whole 25 fps frames)."
    )
    group.add_argument("--windows_per_clip", type=int, default=1, help="Random windows per clip and epoch.")
    group.add_argument("--appearance_augmentation", type=float, default=0.0,
                       help="Probability that a training window gets a random appearance (colour permutation, "
                            "inversion, grey, contrast/brightness, mirror, zoom), the same for all its frames; 0: off.")  # fmt: skip
    group = parser.add_argument_group("validation")
    group.add_argument(
        "--validation_data_dir", type=str, default=None, help="Held-out clips: offset accuracy is reported on them."
    )
    group.add_argument(
        "--validation_windows", type=int, default=2, help="Fixed windows per held-out clip (each at every offset)."
    )
    group.add_argument(
        "--validation_steps", type=int, default=100, help="Validate every N optimizer steps (and at the end)."
    )
    group.add_argument(
        "--validation_batch_size", type=int, default=4, help="Held-out windows per batch (each at every offset)."
    )
    add_training_args(parser, default_learning_rate=1e-3, default_lr_scheduler="constant")
    args = parser.parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Errors that name the flag, before anything is loaded."""
    if args.num_segments < 1:
        raise ValueError(f"`--num_segments` must be >= 1, got {args.num_segments}.")
    if args.num_offset_classes < 3 or args.num_offset_classes % 2 == 0:
        raise ValueError(
            f"`--num_offset_classes` must be odd and >= 3 (a zero offset in the middle), got {args.num_offset_classes}."
        )
    if not 0.0 <= args.appearance_augmentation <= 1.0:
        raise ValueError(f"`--appearance_augmentation` is a probability in [0, 1], got {args.appearance_augmentation}.")
    frames = args.offset_step * SYNC_FRAME_RATE
    if args.offset_step <= 0 or abs(frames - round(frames)) > 1e-6:
        raise ValueError(
            f"`--offset_step` must be a positive multiple of 1/{SYNC_FRAME_RATE} s (whole sync frames), "
            f"got {args.offset_step}."
        )
    if args.offset_weight < 0 or args.contrastive_weight < 0 or args.offset_weight + args.contrastive_weight == 0:
        raise ValueError(
            f"`--offset_weight` ({args.offset_weight}) and `--contrastive_weight` ({args.contrastive_weight}) must be "
            ">= 0 and not both 0."
        )
    for name in ("windows_per_clip", "validation_windows", "validation_steps", "validation_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.validation_data_dir is not None and not os.path.isdir(args.validation_data_dir):
        raise FileNotFoundError(f"`--validation_data_dir` {args.validation_data_dir!r} is not a folder.")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f"`--data_dir` {args.data_dir!r} is not a folder.")


def offset_frames(args: argparse.Namespace) -> list[int]:
    """The offset of each class in 25 fps frames: ``(k - K // 2) * offset_step``."""
    step = round(args.offset_step * SYNC_FRAME_RATE)
    half = args.num_offset_classes // 2
    return [(k - half) * step for k in range(args.num_offset_classes)]


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def load_sync_encoder(args: argparse.Namespace):
    """The visual encoder to train: new from ``--sync_encoder_config``, else ``--sync_encoder`` / the pipeline's."""
    from foley_toolkit.models.encoders.presets import (
        build_sync_encoder,
        synchformer_vit_b_16_config,
        tiny_synchformer_config,
    )
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder

    if args.sync_encoder_config is not None:
        presets = {"synchformer_vit_b_16": synchformer_vit_b_16_config, "tiny": tiny_synchformer_config}
        if args.sync_encoder_config in presets:
            return build_sync_encoder(presets[args.sync_encoder_config]())
        if not os.path.isfile(args.sync_encoder_config):
            raise FileNotFoundError(
                f"`--sync_encoder_config` {args.sync_encoder_config!r} is neither a preset {SYNC_ENCODER_PRESETS} "
                "nor a JSON file."
            )
        with open(args.sync_encoder_config, encoding="utf-8") as f:
            return build_sync_encoder(json.load(f))
    folder = args.sync_encoder
    if folder is None and args.pretrained_model_name_or_path:
        folder = os.path.join(args.pretrained_model_name_or_path, "sync_encoder")
    if folder is None:
        raise ValueError("Pass `--pretrained_model_name_or_path`, `--sync_encoder` or `--sync_encoder_config`.")
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"No sync encoder folder at {folder!r} (`--sync_encoder` / `--pretrained_model_name_or_path`)."
        )
    return SynchformerEncoder.from_pretrained(folder)


def load_sync_head(args: argparse.Namespace, sync_encoder):
    """The audio encoder + offset classifier: ``--sync_head`` or new, sized by the flags."""
    from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead

    encoder_config = sync_encoder.config
    if args.sync_head is not None:
        head = SynchformerSyncHead.from_pretrained(args.sync_head)
        expected = {"visual_dim": encoder_config.hidden_size, "num_classes": args.num_offset_classes}
        for key, value in expected.items():
            if head.config[key] != value:
                raise ValueError(f"`--sync_head` has {key}={head.config[key]}, the run needs {value}.")
        return head
    return SynchformerSyncHead(
        visual_dim=encoder_config.hidden_size,
        num_classes=args.num_offset_classes,
        audio_channels=args.audio_channels,
        audio_layers=args.audio_layers,
        hidden_size=args.head_hidden_size,
        num_heads=args.head_heads,
        # lags up to the largest offset plus one tubelet step either side
        max_lag=max(abs(o) for o in offset_frames(args)) // encoder_config.temporal_patch_size + 2,
        tokens_per_segment=encoder_config.segment_frames // encoder_config.temporal_patch_size,
        segment_token_stride=encoder_config.segment_stride // encoder_config.temporal_patch_size,
    )


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def encoder_frames(sync_frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 sync frames `(frames, 3, H, W)` -> uint8 `(frames, 3, image_size, image_size)`: the pipeline's input
    transform (`preprocess_sync_frames`, then bilinear antialiased resize to the encoder resolution, as
    `FoleyVideoProcessor.preprocess_sync`), stored back as uint8 (``[-1, 1] -> [0, 255]``)."""
    from foley_toolkit.video_processor import preprocess_sync_frames

    chunks = []
    for chunk in sync_frames.split(64):  # bounded float memory for long clips
        frames = preprocess_sync_frames(chunk)
        if frames.shape[-1] != image_size:
            frames = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", antialias=True)
        chunks.append(((frames + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def frames_to_encoder_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames from `encoder_frames` -> float in [-1, 1], what `SynchformerEncoder` takes."""
    return frames.float() / 127.5 - 1.0


def random_appearance(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One random change of appearance, the same for every frame of a window: uint8 `(T, 3, H, W)` -> same shape.

    The sync objective only needs *when* something happens; what it looks like is a nuisance. Drawn independently:
    a permutation of the colour channels, inversion (p 0.3), grey (p 0.2), a per-channel contrast in [0.6, 1.4]
    around mid-grey plus a brightness shift in [-40, 40] levels, a horizontal mirror (p 0.5; the audio here is
    mono, so the label is unchanged) and a zoom into a random square of 75-100% of the side (p 0.5), resized
    back. A change that is constant over time adds no event, so every label stays true.
    """
    size = frames.shape[-1]
    out = frames.float()[:, torch.from_numpy(rng.permutation(3))]
    if rng.random() < 0.3:
        out = 255.0 - out
    if rng.random() < 0.2:
        out = out.mean(1, keepdim=True).expand_as(out)
    contrast = torch.from_numpy(rng.uniform(0.6, 1.4, size=3)).float().view(1, 3, 1, 1)
    brightness = float(rng.uniform(-40.0, 40.0))
    out = (out - 127.5) * contrast + 127.5 + brightness
    if rng.random() < 0.5:
        out = out.flip(-1)
    if rng.random() < 0.5:
        side = int(round(size * rng.uniform(0.75, 1.0)))
        top, left = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        out = F.interpolate(out[..., top : top + side, left : left + side], size=(size, size), mode="bilinear",
                            antialias=True, align_corners=False)  # fmt: skip
    return out.round().clamp(0, 255).to(torch.uint8)


class SyncWindowDataset(torch.utils.data.Dataset):
    r"""Aligned or shifted (video window, audio window) pairs from the clips of a `FoleyClipDataset`.

    Args:
        clips (`FoleyClipDataset`): whole clips or segments, with video (``load_video=True``, mono audio).
        image_size (`int`): the sync encoder's frame size.
        window_frames (`int`): 25 fps frames per video window (``16 + 8 (segments - 1)``).
        offsets (`list[int]`): offset of each class in 25 fps frames (audio start - video start).
        windows_per_clip (`int`): random windows per clip and epoch (training).
        seed (`int`): the window plan is a function of ``(seed, epoch, index)``; exact resume depends on it.
        fixed_windows (`int`, *optional*): validation mode: this many fixed windows per clip, each at every offset.
        cache_dir (`str`, *optional*): also store decoded clips here as safetensors.
        appearance_augmentation (`float`, defaults to 0): probability of `random_appearance` per training window
            (never in validation mode).

    Items: ``frames`` uint8 `(window_frames, 3, image_size, image_size)`, ``audio`` float32
    `(window_frames * 1764,)`, ``label`` (the offset class) and ``audio_aligned`` (the audio at offset 0, for the
    contrastive loss); in validation mode ``audio`` is
    `(num_classes, window_frames * 1764)`, the audio at every offset, and ``label`` is `arange(num_classes)`.
    """

    def __init__(
        self,
        clips,
        image_size: int,
        window_frames: int,
        offsets: list[int],
        windows_per_clip: int = 1,
        seed: int = 0,
        fixed_windows: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        appearance_augmentation: float = 0.0,
    ):
        from foley_toolkit.audio_utils import sequence_lengths

        self.clips = clips
        self.image_size = image_size
        self.window_frames = window_frames
        self.offsets = list(offsets)
        self.windows_per_clip = windows_per_clip
        self.seed = seed
        self.epoch = 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.appearance_augmentation = appearance_augmentation
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.decode_seconds = 0.0
        span = window_frames + max(self.offsets) - min(self.offsets)
        # Clips that hold both windows at every offset (by their frame counts, known without decoding).
        self.eligible = [
            i
            for i, item in enumerate(clips.items)
            if item.has_video and sequence_lengths(item.duration)["sync_frames"] >= span
        ]
        if not self.eligible:
            raise ValueError(
                f"No clip holds a {window_frames}-frame window shifted by up to {max(map(abs, self.offsets))} frames "
                f"(needs >= {span / SYNC_FRAME_RATE:.2f} s of video): use fewer `--num_segments`, a smaller "
                "`--offset_step` / `--num_offset_classes`, or longer clips."
            )
        self.plan: list[tuple[int, int]] | None = None
        if fixed_windows is not None:
            self.plan = []
            for clip in self.eligible:
                num_frames = sequence_lengths(clips.items[clip].duration)["sync_frames"]
                rng = np.random.default_rng([seed, 6, clip])
                self.plan.extend((clip, self._draw_start(rng, num_frames)) for _ in range(fixed_windows))

    def __len__(self) -> int:
        return len(self.plan) if self.plan is not None else len(self.eligible) * self.windows_per_clip

    def describe_item(self, index: int) -> tuple[str, list[str]]:
        """`(clip id, media files)` of window `index` without decoding it (bad-item records, `BadItemGuard`)."""
        clip = self.plan[index][0] if self.plan is not None else self.eligible[index // self.windows_per_clip]
        return describe_item(self.clips, clip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw_start(self, rng: np.random.Generator, num_frames: int) -> int:
        # the video window starts where the audio window fits at every offset
        low = max(0, -min(self.offsets))
        high = num_frames - self.window_frames - max(0, max(self.offsets))
        return int(rng.integers(low, high + 1))

    def _cache_file(self, clip: int) -> Path | None:
        if self.cache_dir is None:
            return None
        from foley_toolkit.data import feature_file_name

        # Ids repeat across datasets (clip_00000 in every synthetic folder): the key names the media files (path,
        # size, modification time), the cut and the resolution.
        item = self.clips.items[clip]
        key = [self.image_size, item.duration]
        for piece in item.pieces:
            source = self.clips.sources[piece.source_index]
            key.extend([piece.start, piece.duration, piece.offset])
            for media in (source.video, source.audio):
                if isinstance(media, (str, os.PathLike)) and os.path.isfile(media):
                    stat = os.stat(media)
                    key.extend([os.path.abspath(media), stat.st_size, stat.st_mtime_ns])
                else:
                    key.append(repr(media)[:200])
        digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
        return self.cache_dir / feature_file_name(f"{item.id}-{digest}")

    def clip_data(self, clip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(frames uint8 (T, 3, s, s), audio float32 (samples,))` of clip `clip`, decoded once."""
        if clip in self._cache:
            return self._cache[clip]
        from safetensors.torch import load_file, save_file

        path = self._cache_file(clip)
        if path is not None and path.is_file():
            tensors = load_file(str(path))
        else:
            began = time.perf_counter()
            example = self.clips[clip]
            tensors = {
                "frames": encoder_frames(example["sync_frames"], self.image_size).contiguous(),
                "audio": example["audio"].mean(0).contiguous(),
            }
            self.decode_seconds += time.perf_counter() - began
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                save_file(tensors, str(tmp))
                os.replace(tmp, path)
        self._cache[clip] = (tensors["frames"], tensors["audio"])
        return self._cache[clip]

    def window(self, index: int) -> tuple[int, int, int]:
        """`(clip, video start frame, offset class)` of training item `index`."""
        clip = self.eligible[index // self.windows_per_clip]
        from foley_toolkit.audio_utils import sequence_lengths

        num_frames = sequence_lengths(self.clips.items[clip].duration)["sync_frames"]
        rng = np.random.default_rng([self.seed, 5, self.epoch, index])
        label = int(rng.integers(0, len(self.offsets)))
        return clip, self._draw_start(rng, num_frames), label

    def _audio_window(self, audio: torch.Tensor, start: int, label: int) -> torch.Tensor:
        audio_start = (start + self.offsets[label]) * SAMPLES_PER_SYNC_FRAME
        num_samples = self.window_frames * SAMPLES_PER_SYNC_FRAME
        window = audio[audio_start : audio_start + num_samples]
        if window.shape[0] < num_samples:  # the last frame's audio can be a few samples short (rounding)
            window = F.pad(window, (0, num_samples - window.shape[0]))
        return window

    def __getitem__(self, index: int) -> dict:
        if self.plan is not None:
            # Validation: one video window with its audio at every offset (the video is encoded once).
            clip, start = self.plan[index]
            frames, audio = self.clip_data(clip)
            labels = range(len(self.offsets))
            return {
                "frames": frames[start : start + self.window_frames],
                "audio": torch.stack([self._audio_window(audio, start, label) for label in labels]),
                "label": torch.arange(len(self.offsets)),
            }
        clip, start, label = self.window(index)
        frames, audio = self.clip_data(clip)
        frames = frames[start : start + self.window_frames]
        if self.appearance_augmentation > 0:
            # its own random stream, so the window plan (clip, start, label) is the same with or without it
            rng = np.random.default_rng([self.seed, 7, self.epoch, index])
            if rng.random() < self.appearance_augmentation:
                frames = random_appearance(frames, rng)
        return {
            "frames": frames,
            "audio": self._audio_window(audio, start, label),
            "audio_aligned": self._audio_window(audio, start, self.offsets.index(0)),
            "label": torch.tensor(label, dtype=torch.long),
        }


def build_window_dataset(
    args: argparse.Namespace, sync_encoder, data_dir: str | None = None, validation: bool = False
) -> SyncWindowDataset:
    """`SyncWindowDataset` over `data_dir` (validation: fixed windows) or ``--data_dir`` / ``--hf_dataset``."""
    from foley_toolkit.data import FoleyClipDataset

    config = sync_encoder.config
    window_frames = sync_window_frames(args.num_segments, config.segment_frames, config.segment_stride)
    offsets = offset_frames(args)
    kwargs = dict(
        segment_seconds=args.segment_seconds if args.segment_seconds and args.segment_seconds > 0 else None,
        min_seconds=(window_frames + max(offsets) - min(offsets)) / SYNC_FRAME_RATE,
        load_video=True,
        mono=True,
    )
    try:
        if validation:
            clips = FoleyClipDataset.from_folder(data_dir, seed=args.seed, **kwargs)
        else:
            clips = build_clip_dataset(args, **kwargs)
    except ValueError as error:
        if "min_seconds" not in str(error):
            raise
        raise ValueError(
            f"No clip in {data_dir or args.data_dir or args.hf_dataset} holds a {window_frames}-frame window shifted "
            f"by up to {max(offsets)} frames ({kwargs['min_seconds']:.2f} s): use fewer `--num_segments`, a smaller "
            "`--offset_step` / `--num_offset_classes`, or longer clips."
        ) from error
    return SyncWindowDataset(
        clips,
        image_size=config.image_size,
        window_frames=window_frames,
        offsets=offsets,
        windows_per_clip=args.windows_per_clip,
        seed=args.seed,
        fixed_windows=args.validation_windows if validation else None,
        cache_dir=args.cache_dir,
        appearance_augmentation=0.0 if validation else args.appearance_augmentation,
    )


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def aligned_auc(scores: torch.Tensor, aligned: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` separating aligned (True) from shifted pairs (Mann-Whitney U; ties
    count one half). 0.5 is chance."""
    positive, negative = scores[aligned], scores[~aligned]
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).float().sum()
    ties = (positive[:, None] == negative[None, :]).float().sum()
    return float((greater + 0.5 * ties) / (positive.numel() * negative.numel()))


@torch.no_grad()
def evaluate(sync_encoder, head, mel_transform, dataset: SyncWindowDataset, batch_size: int, device) -> dict:
    """Offset accuracy on the fixed windows of `dataset` (every window at every offset).

    Returns ``offset_accuracy`` (chance ``1 / K``), ``offset_within_one`` (predicted class at most one step off),
    ``aligned_auc`` (how well the zero-offset score ``log p(k = K // 2)`` separates aligned from shifted pairs,
    0.5 is chance), ``loss`` and ``num_pairs``.
    """
    was_training = sync_encoder.training, head.training
    sync_encoder.eval()
    head.eval()
    zero_class = len(dataset.offsets) // 2
    logits, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        num_classes = batch["audio"].shape[1]
        visual = sync_encoder(frames_to_encoder_input(batch["frames"].to(device)), segment_batch_size=None)
        mel = mel_transform(batch["audio"].flatten(0, 1).to(device))  # window-major: every offset of window 0, ...
        logits.append(head(visual.repeat_interleave(num_classes, dim=0), mel).float().cpu())
        labels.append(batch["label"].flatten())
    logits, labels = torch.cat(logits), torch.cat(labels)
    predicted = logits.argmax(-1)
    log_probs = logits.log_softmax(-1)
    results = {
        "offset_accuracy": float((predicted == labels).float().mean()),
        "offset_within_one": float(((predicted - labels).abs() <= 1).float().mean()),
        "aligned_auc": aligned_auc(log_probs[:, zero_class], labels == zero_class),
        "loss": float(F.cross_entropy(logits, labels)),
        "num_pairs": int(labels.numel()),
        "chance_accuracy": 1.0 / len(dataset.offsets),
    }
    sync_encoder.train(was_training[0])
    head.train(was_training[1])
    return results


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    from foley_toolkit.data import LengthGroupedBatchSampler
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram

    accelerator = setup_accelerator(args)
    check_not_sharded(accelerator, "train_sync_encoder.py")
    generator = make_generator(accelerator, args.seed)

    sync_encoder = load_sync_encoder(args).train()
    head = load_sync_head(args, sync_encoder).train()
    if args.gradient_checkpointing:
        sync_encoder.enable_gradient_checkpointing()
    mel_transform = LogMelSpectrogram().to(accelerator.device)
    register_checkpoint_hooks(accelerator, {"sync_encoder": sync_encoder, "sync_head": head})

    dataset = build_window_dataset(args, sync_encoder)
    validation_set = None
    if args.validation_data_dir is not None:
        validation_set = build_window_dataset(args, sync_encoder, args.validation_data_dir, validation=True)
    sampler = LengthGroupedBatchSampler([1] * len(dataset), args.train_batch_size, shuffle=True, seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=BadItemCollate(),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip

    scale_learning_rates(args, accelerator)
    params = list(sync_encoder.parameters()) + list(head.parameters())
    optimizer = build_optimizer(args, params)
    sync_encoder, head, optimizer, dataloader = accelerator.prepare(sync_encoder, head, optimizer, dataloader)
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    lr_scheduler = accelerator.prepare(build_lr_scheduler(args, optimizer, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    logger.info(
        f"  {len(dataset.eligible)} of {len(dataset.clips)} clips hold a window ({dataset.window_frames} frames) at "
        f"every offset {offset_frames(args)} (frames); chance accuracy {1 / args.num_offset_classes:.3f}"
    )
    init_trackers(accelerator, args, "train_sync_encoder")
    global_step = resume_from_checkpoint(accelerator, args, generator)

    def training_step(batch: dict, step: int) -> dict:
        visual = sync_encoder(frames_to_encoder_input(batch["frames"]), segment_batch_size=None)
        with torch.no_grad():
            mel = mel_transform(batch["audio"])
        logits = head(visual, mel)
        offset_loss = F.cross_entropy(logits.float(), batch["label"])
        loss = args.offset_weight * offset_loss
        logs = {"offset_loss": offset_loss.detach().item()}
        if args.contrastive_weight > 0:
            with torch.no_grad():
                aligned_mel = mel_transform(batch["audio_aligned"])
            # through the prepared head's own module: DDP sees this call inside the same backward
            contrastive = unwrap_model(accelerator, head).contrastive_loss(visual, aligned_mel)
            loss = loss + args.contrastive_weight * contrastive
            logs["contrastive_loss"] = contrastive.detach().item()
        backward_and_step(accelerator, loss, params, optimizer, lr_scheduler, args.max_grad_norm)
        accuracy = (logits.detach().argmax(-1) == batch["label"]).float().mean()
        return {"loss": loss.detach().item(), "accuracy": accuracy.item(), "lr": lr_scheduler.get_last_lr()[0], **logs}

    validation_history: list[dict] = []
    train_began = time.perf_counter()

    def validate(step: int) -> dict:
        results = evaluate(
            unwrap_model(accelerator, sync_encoder), unwrap_model(accelerator, head), mel_transform,
            validation_set, args.validation_batch_size, accelerator.device,
        )  # fmt: skip
        validation_history.append({"step": step, **results})
        accelerator.print(
            f"[validation step {step}] offset accuracy {results['offset_accuracy']:.3f} "
            f"(chance {results['chance_accuracy']:.3f}), within one step {results['offset_within_one']:.3f}, "
            f"aligned AUC {results['aligned_auc']:.3f}, {results['num_pairs']} pairs"
        )
        logged = ("offset_accuracy", "offset_within_one", "aligned_auc", "loss")
        return {f"val_{k}": v for k, v in results.items() if k in logged}

    def on_optimizer_step(step: int) -> dict | None:
        if validation_set is not None and (step % args.validation_steps == 0 or step == max_train_steps):
            return validate(step)
        return None

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [sync_encoder, head], max_train_steps,
        steps_per_epoch, global_step, generator, on_optimizer_step,
    )  # fmt: skip
    train_seconds = time.perf_counter() - train_began

    accelerator.wait_for_everyone()
    validation = validation_history[-1] if validation_history else None
    output = args.output_dir
    if accelerator.is_main_process:
        trained = unwrap_model(accelerator, sync_encoder)
        atomic_save_pretrained(trained, os.path.join(args.output_dir, "sync_encoder"))
        atomic_save_pretrained(unwrap_model(accelerator, head), os.path.join(args.output_dir, "sync_head"))
        if is_pipeline_folder(args.pretrained_model_name_or_path):
            card = model_card(args, "train_sync_encoder.py", ["sync_encoder"], args.pretrained_model_name_or_path)
            output = save_trained_pipeline(
                args.pretrained_model_name_or_path, os.path.join(args.output_dir, "pipeline"),
                {"sync_encoder": trained}, card,
            )  # fmt: skip
        if validation_history:
            atomic_write_text(
                os.path.join(args.output_dir, "validation.json"), json.dumps(validation_history, indent=2)
            )
    finish_training(accelerator, args, "train_sync_encoder.py", output, ["sync_encoder"],
                    args.pretrained_model_name_or_path)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    steps_run = len(history)
    # decoded_clips counts clips decoded or read from --cache_dir in this run; decode_seconds only the decoding
    timing = {
        "train_seconds": train_seconds,
        "decode_seconds": dataset.decode_seconds + (validation_set.decode_seconds if validation_set else 0.0),
        "decoded_clips": len(dataset._cache) + (len(validation_set._cache) if validation_set else 0),
        "steps_per_second": steps_run / train_seconds if train_seconds > 0 else 0.0,
    }
    accelerator.print(
        f"[train_sync_encoder.py] {steps_run} steps in {train_seconds:.0f} s "
        f"({timing['steps_per_second']:.3f} steps/s, "
        f"including {timing['decode_seconds']:.0f} s decoding {timing['decoded_clips']} clips)"
    )
    return {"global_step": global_step, "history": history, "validation": validation, "timing": timing}


if __name__ == "__main__":
    main(parse_args())
