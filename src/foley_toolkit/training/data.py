"""Training data: clip datasets from ``--data_dir`` / ``--hf_dataset``, the dataloaders of the scripts, and the
guard that turns an unreadable or non-finite item into an error naming it, or (``--skip_bad_items``) a record
that the loop logs and counts."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from .outputs import non_finite_tensors

logger = get_logger(__name__)

# Key of a batch (and of a skipped example) listing the items dropped under --skip_bad_items.
BAD_ITEMS_KEY = "bad_items"


def build_clip_dataset(args: argparse.Namespace, **kwargs):
    """A `FoleyClipDataset` from `--data_dir` or `--hf_dataset`, with ``data_report`` (see `report_clip_plan`).

    Under ``--skip_bad_items`` the clips of a `--data_dir` whose media is missing or cannot be probed are left out
    (logged with the file and the reason, counted) instead of stopping the run.
    """
    from ..data import FoleyClipDataset

    if (args.data_dir is None) == (args.hf_dataset is None):
        raise ValueError("Pass exactly one of `--data_dir` and `--hf_dataset`.")
    kwargs.setdefault("seed", args.seed)
    if args.data_dir is not None:
        sources, unreadable = readable_clip_sources(args.data_dir, skip=bool(getattr(args, "skip_bad_items", False)))
        dataset = FoleyClipDataset(sources, **kwargs)
    else:
        from ..data import load_hf_dataset

        hf_data_dir = getattr(args, "hf_data_dir", None)  # scripts without the flag read saved folders and Hub names
        hf_dataset = load_hf_dataset(args.hf_dataset, data_dir=hf_data_dir, split=args.hf_split)
        dataset, unreadable = FoleyClipDataset.from_hf_dataset(hf_dataset, data_dir=hf_data_dir, **kwargs), []
    dataset.data_report = report_clip_plan(dataset, kwargs.get("min_seconds"), unreadable)
    return dataset


def warn_once(message: str) -> None:
    """A warning from the main process, or from this process when no accelerate state exists yet (a dataset built
    before the accelerator, as in notebooks and tests)."""
    try:
        logger.warning(message)
    except RuntimeError:
        logging.getLogger(__name__).warning(message)


def readable_clip_sources(data_dir: str | os.PathLike, skip: bool) -> tuple[list, list[dict]]:
    """`(sources, unreadable)`: the `ClipSource`s of `data_dir`'s metadata, and with `skip` the records
    ``{"id", "file", "reason"}`` of the rows left out because their media is missing or its duration cannot be read
    (without `skip` such a row raises, naming the file)."""
    from ..data import read_metadata, source_duration, sources_from_records

    records = read_metadata(data_dir)
    if not skip:
        return sources_from_records(records, data_dir), []
    sources, unreadable, seen = [], [], set()
    for row_index, row in enumerate(records):
        try:
            (source,) = sources_from_records([row], data_dir)
            source_duration(source)  # probes the container once (stored on the source)
        except Exception as error:  # missing file, not a media file, no stream, truncated header
            record = {"id": str(row.get("id") or row.get("file_name")), "file": str(row.get("file_name")),
                      "reason": f"{type(error).__name__}: {error}"}  # fmt: skip
            warn_once(f"Skipping unreadable clip {record['file']!r}: {record['reason']}")
            unreadable.append(record)
            continue
        if source.id in seen:  # the suffix `sources_from_records` gives a repeated id
            source.id = f"{source.id}_{row_index}"
        seen.add(source.id)
        sources.append(source)
    if not sources:
        raise ValueError(f"`--data_dir` {str(data_dir)!r}: no clip could be read ({len(unreadable)} unreadable).")
    return sources, unreadable


def report_clip_plan(dataset: Any, min_seconds: float | None, unreadable: list[dict]) -> dict[str, Any]:
    """Count (and warn once about) what the item plan drops or makes unconditional: clips (or the tails of long
    clips) shorter than ``--min_seconds``, and audio-only clips without a caption (fully unconditional items)."""
    eps = 1e-3
    covered = [0.0] * len(dataset.sources)
    for item in dataset.items:
        if item.kind in ("overlay", "sequence"):  # augmented items reuse material: not coverage
            continue
        for piece in item.pieces:
            covered[piece.source_index] += piece.duration
    dropped, tails = [], []
    for index, source in enumerate(dataset.sources):
        if covered[index] <= eps:
            dropped.append(source.id)
        elif source.duration is not None and source.duration - covered[index] > eps:
            tails.append(source.id)
    uncaptioned = [s.id for s in dataset.sources if s.video is None and not s.caption.strip()]
    if dropped:
        warn_once(f"{len(dropped)} clips are shorter than --min_seconds={min_seconds} and were dropped: "
                       f"{dropped[:10]}{' ...' if len(dropped) > 10 else ''}")  # fmt: skip
    if tails:
        warn_once(f"{len(tails)} clips lost a tail shorter than --min_seconds={min_seconds}.")
    if uncaptioned:
        warn_once(f"{len(uncaptioned)} audio-only clips have no caption: they train as fully unconditional "
                       f"items (no text, no video): {uncaptioned[:10]}{' ...' if len(uncaptioned) > 10 else ''}")  # fmt: skip
    return {
        "num_unreadable_clips": len(unreadable),
        "unreadable_clips": unreadable,
        "num_short_clips_dropped": len(dropped),
        "short_clips_dropped": dropped,
        "num_short_tails_dropped": len(tails),
        "num_uncaptioned_audio_only": len(uncaptioned),
    }


def build_audio_dataloader(args: argparse.Namespace, mono: bool = True):
    """`(dataset, batch_sampler, dataloader)` of random `--crop_seconds` crops (seeded by seed, epoch, index)."""
    from ..data import LengthGroupedBatchSampler, collate_audio_crops

    dataset = build_clip_dataset(
        args,
        segment_seconds=args.segment_seconds if args.segment_seconds and args.segment_seconds > 0 else None,
        min_seconds=args.min_seconds,
        load_video=False,
        mono=mono,
        crop_seconds=args.crop_seconds,
        crop_sampling=args.crop_sampling,
    )
    sampler = LengthGroupedBatchSampler([1] * len(dataset), args.train_batch_size, shuffle=True, seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=BadItemCollate(collate_audio_crops),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip
    return dataset, sampler, dataloader


def build_feature_dataloader(args: argparse.Namespace):
    """`(dataset, batch_sampler, dataloader)` over the cached features of ``--feature_dir``, batched per
    ``--duration_batching`` (bucket: equal lengths; pad: mixed lengths padded to the longest)."""
    from ..data import CachedFeatureDataset, LengthGroupedBatchSampler, collate_features

    dataset = CachedFeatureDataset(args.feature_dir)
    sampler = LengthGroupedBatchSampler(
        dataset.lengths,
        batch_size=args.train_batch_size,
        group_by_length=args.duration_batching == "bucket",
        shuffle=True,
        seed=args.seed,
    )
    dataloader = torch.utils.data.DataLoader(
        guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=BadItemCollate(collate_features),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip
    return dataset, sampler, dataloader


def pad_sequences(
    sequences: Sequence[torch.Tensor], dim: int = 0, pad_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of different lengths along `dim`, padding at the end.

    Returns:
        `(padded, mask)`: `padded` has shape `(batch, *shape)` with the longest length at `dim + 1`;
        `mask` has shape `(batch, max_length)`, True where a position holds real data.
    """
    if len(sequences) == 0:
        raise ValueError("`sequences` must not be empty.")
    lengths = [s.shape[dim] for s in sequences]
    max_length = max(lengths)
    padded = []
    for s in sequences:
        pad = [0, 0] * s.ndim
        # F.pad lists pads from the last dimension backwards.
        pad[2 * (s.ndim - 1 - dim) + 1] = max_length - s.shape[dim]
        padded.append(F.pad(s, pad, value=pad_value))
    mask = torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]
    return torch.stack(padded), mask


class BadItemError(ValueError):
    """An item whose media cannot be read or whose values are not finite (without ``--skip_bad_items``)."""


def describe_item(dataset: Any, index: int) -> tuple[str, list[str]]:
    """`(item id, files)` of item `index` of a `CachedFeatureDataset`, a `FoleyClipDataset`, a dataset with its own
    ``describe_item(index)`` or one wrapping them index for index (``.clips`` / ``.dataset``), found without loading
    the item (it may be the unreadable one)."""
    if hasattr(type(dataset), "describe_item"):
        return dataset.describe_item(index)
    entries = getattr(dataset, "entries", None)
    if entries is not None and getattr(dataset, "cache_dir", None) is not None:
        entry = entries[index]
        return str(entry.get("id", index)), [str(Path(dataset.cache_dir) / entry["file"])]
    items, sources = getattr(dataset, "items", None), getattr(dataset, "sources", None)
    if items is not None and sources is not None:
        item, files = items[index], []
        for piece in item.pieces:
            source = sources[piece.source_index]
            for media in (source.video, source.audio):
                if isinstance(media, str) and media not in files:
                    files.append(media)
        return item.id, files
    inner = getattr(dataset, "clips", None) or getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        return describe_item(inner, index)
    return str(index), []


class BadItemGuard(torch.utils.data.Dataset):
    """Wraps a dataset: an item that raises when loaded (unreadable or truncated media, a broken feature file) or
    that holds NaN/Inf in a float tensor stops the run with a `BadItemError` naming the item id, its file and the
    reason, or (`skip=True`) comes back as ``{BAD_ITEMS_KEY: [{"id", "file", "reason"}]}``, which `BadItemCollate`
    removes from the batch and `run_training_loop` logs and counts (the record travels with the batch, so it is
    counted in the training process even with dataloader workers). Other attributes (``set_epoch``, ``lengths``,
    ``items``, ...) are the wrapped dataset's."""

    def __init__(self, dataset: Any, skip: bool = False):
        self.dataset = dataset
        self.skip = skip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def check(self, index: int, example: Any = None, error: BaseException | None = None) -> dict | None:
        """The bad-item record of `index` (None when `example` is fine); raises `BadItemError` unless skipping."""
        if error is not None:
            reason = f"{type(error).__name__}: {error}"
        else:
            bad = non_finite_tensors(example) if isinstance(example, dict) else []
            if not bad:
                return None
            reason = f"non-finite values (NaN/Inf) in {', '.join(bad)}"
        item_id, files = describe_item(self.dataset, index)
        record = {"id": item_id, "file": ", ".join(files), "reason": reason}
        if not self.skip:
            raise BadItemError(
                f"Bad item {item_id!r} ({record['file'] or 'no file'}): {reason}. Fix or remove it, or pass "
                "--skip_bad_items to skip (and count) such items."
            ) from error
        return record

    def __getitem__(self, index: int) -> dict:
        try:
            example = self.dataset[index]
        except Exception as error:  # anything a decoder or a safetensors reader raises for one broken file
            return {BAD_ITEMS_KEY: [self.check(index, error=error)]}
        record = self.check(index, example)
        return example if record is None else {BAD_ITEMS_KEY: [record]}


class BadItemCollate:
    """Wraps a collate function: skipped examples (`BadItemGuard`) leave the batch, their records go to
    ``batch[BAD_ITEMS_KEY]``; a batch of only bad items is ``{BAD_ITEMS_KEY: [...]}``."""

    def __init__(self, collate_fn: Callable[[list], dict] | None = None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, examples: list[dict]) -> dict:
        bad = [record for e in examples for record in e.get(BAD_ITEMS_KEY, [])]
        good = [e for e in examples if BAD_ITEMS_KEY not in e]
        batch = self.collate_fn(good) if good else {}
        batch[BAD_ITEMS_KEY] = bad
        return batch


def guard_dataset(dataset: Any, args: argparse.Namespace) -> BadItemGuard:
    """`dataset` wrapped in a `BadItemGuard` that skips under ``--skip_bad_items``."""
    return BadItemGuard(dataset, skip=bool(getattr(args, "skip_bad_items", False)))


def dataset_report(dataset: Any) -> dict[str, Any]:
    """What a `FoleyClipDataset`'s plan left out or made unconditional, logged once by `build_clip_dataset`."""
    report = getattr(dataset, "data_report", None)
    if report is None:
        inner = getattr(dataset, "dataset", None) or getattr(dataset, "clips", None)
        report = dataset_report(inner) if inner is not None and inner is not dataset else {}
    return report
