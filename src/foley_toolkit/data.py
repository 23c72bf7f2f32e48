"""Training data: clips (video + audio track + caption), their 10-second segments and augmentations, cached
features, and batch samplers for clips of different durations.

A dataset is a folder with a ``metadata.jsonl`` (or ``metadata.csv``) whose rows name the media and its caption::

    {"file_name": "dog.mp4", "caption": "a dog barks twice"}                       # video with its audio track
    {"file_name": "door.mp4", "caption": "", "audio_file_name": "door.wav"}        # video + separate audio
    {"file_name": "rain.wav", "caption": "heavy rain on a tin roof"}               # audio only (text-audio pair)

or a 🤗 ``datasets.Dataset`` with the same columns (`FoleyClipDataset.from_hf_dataset`, `load_hf_dataset`). Optional columns:
``duration`` (seconds; probed from the file otherwise), ``events`` (a list; clips with one event are the
"single-event" clips of the temporal augmentation), ``id``. ``audio_file`` is accepted as an alias of
``audio_file_name`` (what ``foley_toolkit.synthetic`` writes).

What one item is (`FoleyClipDataset`), following the paper's data section (5.2):

* **segmenting** (``segment_seconds=10``): clips longer than a segment are cut into consecutive segments;
* **concatenation of short clips** (``concat_short=True``): clips shorter than a segment are joined, in a seeded
  order, into segments of ``segment_seconds`` (video with video, audio-only with audio-only), captions merged;
* **temporal augmentation** (``num_augmented_clips=N``): N extra multi-event clips, each made of 2 to
  ``max_events`` single-event clips played one after the other (``"A, then B"``) or, for audio-only clips,
  at the same time (``"A, while B"``).

The plan of items is computed once, deterministically from ``seed``; decoding happens in ``__getitem__``.

🤗 ``datasets`` and media decoding: datasets 5 decodes ``Audio`` / ``Video`` columns (and builds an ``audiofolder``)
with torchcodec, whose PyPI wheels are built against CUDA torch and need system FFmpeg libraries, so a CPU install
cannot load them. This module therefore never lets ``datasets`` decode: `FoleyClipDataset.from_hf_dataset` reads
``Audio`` / ``Video`` columns with ``decode=False`` (``{"path", "bytes"}`` cells) and decodes the media itself with
soundfile / PyAV, the same decoders as for a ``--data_dir`` folder; `load_hf_dataset` builds an ``audiofolder`` from
the folder's metadata file when torchcodec cannot be loaded (the same rows, ``audio`` typed ``Audio(decode=False)``).
torchcodec is not needed, and is used by ``datasets`` for building whenever it loads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import replace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .audio_utils import SAMPLE_RATE, SYNC_SEGMENT_FRAMES, load_audio, resample, seconds_to_samples, sequence_lengths

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".gif"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FEATURE_INDEX_NAME = "index.jsonl"


# ------------------------------------------------------------------------------------------------
# Sources: one row of metadata
# ------------------------------------------------------------------------------------------------


@dataclass
class ClipSource:
    """One media item of the dataset.

    Args:
        id (`str`): Stable name (used for cache file names).
        caption (`str`): Text description ("" for video-audio pairs without text).
        video (`str` or `bytes`, *optional*): The video file (path or encoded bytes); None for audio-only clips.
        audio (*optional*): A separate audio file (path or encoded bytes), or decoded audio `(waveform (channels,
            samples), sample_rate)`; None means the video's own audio track.
        duration (`float`, *optional*): Seconds; probed from the media when None.
        num_events (`int`, *optional*): Number of sound events, when the metadata knows it.
    """

    id: str
    caption: str
    video: str | bytes | None = None
    audio: str | bytes | tuple[torch.Tensor, int] | None = None
    duration: float | None = None
    num_events: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def has_video(self) -> bool:
        """Whether the clip has a video (CLIP/Synchformer conditions) besides its audio."""
        return self.video is not None


def read_metadata(data_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``metadata.jsonl`` (preferred) or ``metadata.csv`` in `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} is not a folder.")
    jsonl, csv_file = data_dir / METADATA_FILES[0], data_dir / METADATA_FILES[1]
    if jsonl.is_file():
        rows = []
        with open(jsonl, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{jsonl}:{line_number} is not valid JSON: {error}") from error
        return rows
    if csv_file.is_file():
        with open(csv_file, encoding="utf-8", newline="") as f:
            return [dict(row) for row in csv.DictReader(f)]
    raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} has neither metadata.jsonl nor metadata.csv.")


def _is_audio_path(path: str) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "clip"


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _num_events(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, (int, float)):
        return int(value)
    return None


def sources_from_records(records: Sequence[dict], data_dir: str | os.PathLike | None = None) -> list[ClipSource]:
    """`ClipSource`s from metadata rows (`file_name`, `caption`, optional `audio_file_name`, `duration`, `events`)."""
    base = Path(data_dir) if data_dir is not None else None
    sources, seen_ids = [], set()
    for row_index, row in enumerate(records):
        file_name = row.get("file_name")
        if not file_name:
            raise ValueError(f"Metadata row {row_index} has no `file_name`: {row!r}.")
        path = str(base / file_name) if base is not None and not os.path.isabs(file_name) else str(file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Metadata row {row_index}: `file_name` {file_name!r} does not exist ({path}).")
        audio_name = row.get("audio_file_name") or row.get("audio_file") or None
        audio_path = None
        if audio_name:
            audio_path = str(base / audio_name) if base is not None and not os.path.isabs(audio_name) else audio_name
            if not os.path.isfile(audio_path):
                raise FileNotFoundError(
                    f"Metadata row {row_index}: `audio_file_name` {audio_name!r} does not exist ({audio_path})."
                )
        is_audio_only = _is_audio_path(path)
        source_id = _safe_id(str(row.get("id") or os.path.splitext(file_name)[0]))
        if source_id in seen_ids:
            source_id = f"{source_id}_{row_index}"
        seen_ids.add(source_id)
        sources.append(
            ClipSource(
                id=source_id,
                caption=str(row.get("caption") or ""),
                video=None if is_audio_only else path,
                audio=path if is_audio_only else audio_path,
                duration=_optional_float(row.get("duration")),
                num_events=_num_events(row.get("events")),
                extra={k: v for k, v in row.items() if k not in ("file_name", "caption", "audio_file_name", "audio_file")},
            )
        )
    if not sources:
        raise ValueError("`records` is empty: the metadata has no rows.")
    return sources


def _hf_media(value: Any, data_dir: Path | None, column: str, row_index: int) -> tuple[Any, str | None]:
    """A `datasets` cell -> `(media, file name)`: media is a path, bytes or `(waveform, sample_rate)`; the file name
    (when the cell has one) tells audio files from videos by extension. Relative paths are resolved against
    `data_dir` and must exist."""
    if value is None:
        return None, None
    if isinstance(value, (str, os.PathLike)):
        value = os.fspath(value)
        path = str(data_dir / value) if data_dir is not None and not os.path.isabs(value) else value
        if not os.path.isfile(path):
            hint = "" if data_dir is not None or os.path.isabs(value) else " (relative paths need `data_dir`)"
            raise FileNotFoundError(f"Row {row_index}, column `{column}`: {path!r} is not a file{hint}.")
        return path, path
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        if value.get("array") is not None:
            waveform = torch.as_tensor(np.asarray(value["array"], dtype=np.float32))
            return (waveform if waveform.ndim == 2 else waveform[None], int(value["sampling_rate"])), value.get("path")
        if value.get("bytes"):  # embedded media (Hub parquet): its `path` is only a name
            return bytes(value["bytes"]), value.get("path")
        if value.get("path"):
            return _hf_media(value["path"], data_dir, column, row_index)
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder (a dataset already decoded by torchcodec)
        samples = value.get_all_samples()
        return (samples.data.float(), int(samples.sample_rate)), None
    raise ValueError(f"Row {row_index}, column `{column}` holds an unsupported value of type {type(value).__name__}.")


def _without_media_decoding(dataset):
    """`dataset` with every ``Audio`` / ``Video`` column set to ``decode=False`` (cells ``{"path", "bytes"}``), so that
    rows are read without torchcodec; this module decodes the media itself."""
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, (datasets.Audio, datasets.Video)) and feature.decode:
            dataset = dataset.cast_column(name, replace(feature, decode=False))
    return dataset


# datasets' folder builders and the column their `file_name` becomes
FOLDER_BUILDERS = {"audiofolder": "audio", "videofolder": "video"}


def torchcodec_available() -> bool:
    """Whether torchcodec imports and loads its FFmpeg libraries here (what datasets 5 needs to decode media)."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads the native libraries: fails without a matching FFmpeg/torch)
    except Exception:  # ImportError, or OSError/RuntimeError from a wheel built for another torch or FFmpeg
        return False
    return True


def _folder_dataset_from_metadata(builder: str, data_dir: Path, split: str, cache_dir: str | None):
    """The rows ``datasets.load_dataset(builder, data_dir=data_dir, split=split)`` builds from the folder's metadata
    file, read with datasets' json/csv builder: `file_name` becomes the ``audio``/``video`` column (absolute paths,
    ``Audio(decode=False)``/``Video(decode=False)``); every other column is kept as it is."""
    import datasets

    folder = data_dir / split if (data_dir / split).is_dir() else data_dir
    if folder == data_dir and split != "train":
        raise ValueError(f"`split` {split!r}: `data_dir` {str(data_dir)!r} has no {split!r} sub-folder.")
    metadata = next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)
    if metadata is None:
        raise FileNotFoundError(
            f"`data_dir` {str(folder)!r} has neither metadata.jsonl nor metadata.csv (needed to read a {builder} "
            "without torchcodec)."
        )
    dataset = datasets.load_dataset(
        "json" if metadata.suffix == ".jsonl" else "csv", data_files=str(metadata), split="train", cache_dir=cache_dir
    )
    if "file_name" not in dataset.column_names:
        raise ValueError(f"{metadata} has no `file_name` column.")
    column = FOLDER_BUILDERS[builder]
    root = str(folder.resolve())
    dataset = dataset.map(lambda name: {"file_name": os.path.join(root, name)}, input_columns="file_name")
    feature = datasets.Audio(decode=False) if column == "audio" else datasets.Video(decode=False)
    return dataset.rename_column("file_name", column).cast_column(column, feature)


def load_hf_dataset(
    name: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
):
    r"""
    A 🤗 `datasets.Dataset` for `FoleyClipDataset.from_hf_dataset`: a folder written by ``save_to_disk``, a builder
    (``"videofolder"``, ``"audiofolder"``, ``"json"``, ...) with `data_dir`, or a Hub name (cached offline).

    Args:
        name (`str` or `os.PathLike`): Saved folder, builder or dataset name.
        data_dir (`str` or `os.PathLike`, *optional*): The folder a builder reads (required by ``audiofolder`` /
            ``videofolder``), e.g. a clips folder with ``metadata.jsonl`` as written by ``foley-toolkit
            make-synthetic``.
        split (`str`, defaults to `"train"`): The split.
        cache_dir (`str` or `os.PathLike`, *optional*): datasets' cache folder (its default when None).

    ``audiofolder`` on datasets 5 needs torchcodec even to build (it encodes every path through torchcodec's audio
    encoder); when torchcodec cannot be loaded, the same rows are read from the folder's ``metadata.jsonl`` /
    ``metadata.csv`` (at `data_dir`, or ``data_dir/split``) with datasets' json/csv builder. ``videofolder`` builds
    without torchcodec; its ``video`` column is read with ``decode=False`` by `FoleyClipDataset.from_hf_dataset`.
    """
    import datasets

    name = os.fspath(name)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    if os.path.isdir(name) and any(
        os.path.isfile(os.path.join(name, f)) for f in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        if data_dir is not None:
            raise ValueError(f"`data_dir` is for builders; {name!r} is a folder written by `save_to_disk`.")
        dataset = datasets.load_from_disk(name)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"`split` {split!r} is not in {name!r} (splits: {sorted(dataset)}).")
            dataset = dataset[split]
        return dataset
    if name in FOLDER_BUILDERS:
        if data_dir is None:
            raise ValueError(f"`data_dir` is required with {name!r}: the folder of media and metadata.jsonl to read.")
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} is not a folder.")
        if name == "audiofolder" and not torchcodec_available():
            return _folder_dataset_from_metadata(name, data_dir, split, cache_dir)
        data_dir = str(data_dir)
    elif data_dir is not None:
        data_dir = os.fspath(data_dir)
    return datasets.load_dataset(name, data_dir=data_dir, split=split, cache_dir=cache_dir)


# ------------------------------------------------------------------------------------------------
# Durations
# ------------------------------------------------------------------------------------------------


def probe_duration(media: str | bytes, is_video: bool) -> float:
    """Duration in seconds from the container header (video stream for videos, audio stream otherwise)."""
    import io

    import av

    if isinstance(media, str) and not is_video:
        try:
            import soundfile as sf

            return float(sf.info(media).duration)
        except Exception:  # not a libsndfile format: ask FFmpeg
            pass
    from .utils.video_io import media_label, open_media

    label = media_label(media)
    source = io.BytesIO(media) if isinstance(media, bytes) else media
    with open_media(source, label, "video" if is_video else "audio") as container:
        stream = (container.streams.video if is_video else container.streams.audio)[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if is_video and stream.frames and stream.average_rate:
            return float(stream.frames / stream.average_rate)
        if container.duration is not None:
            return container.duration / av.time_base
    raise ValueError(f"Cannot find the duration of {label}.")


def source_duration(source: ClipSource) -> float:
    """Seconds of `source`: its `duration`, else probed from the video (or the audio) once and stored on it."""
    if source.duration is None:
        if source.video is not None:
            source.duration = probe_duration(source.video, is_video=True)
        elif isinstance(source.audio, tuple):
            source.duration = source.audio[0].shape[-1] / source.audio[1]
        else:
            source.duration = probe_duration(source.audio, is_video=False)
    return source.duration


# ------------------------------------------------------------------------------------------------
# The plan of items
# ------------------------------------------------------------------------------------------------


@dataclass
class ClipPiece:
    """`duration` seconds of source `source_index` from `start`, placed at `offset` seconds in the item."""

    source_index: int
    start: float
    duration: float
    offset: float = 0.0


@dataclass
class ClipItem:
    """One training example: pieces of sources laid out in time (one piece for a plain clip or segment)."""

    id: str
    caption: str
    pieces: list[ClipPiece]
    duration: float
    has_video: bool
    kind: str = "clip"  # clip | segment | concat | sequence | overlay

    @property
    def seconds_start(self) -> float:
        """Start of the item within its source (stable-audio's `seconds_start`); 0 for built clips."""
        return self.pieces[0].start if self.kind in ("clip", "segment") else 0.0


def merge_captions(captions: Sequence[str], rule: str = "sequence") -> str:
    """One caption for clips joined in time ("A, then B") or played together ("A, while B")."""
    captions = [c.strip().rstrip(".") for c in captions if c and c.strip()]
    joiner = ", then " if rule == "sequence" else ", while "
    return joiner.join(captions)


def plan_items(
    sources: Sequence[ClipSource],
    segment_seconds: float | None = 10.0,
    min_seconds: float = 1.0,
    concat_short: bool = False,
    num_augmented_clips: int = 0,
    max_events: int = 3,
    seed: int = 0,
) -> list[ClipItem]:
    """The deterministic list of items for `FoleyClipDataset` (see the module docstring)."""
    if segment_seconds is not None and segment_seconds <= 0:
        raise ValueError(f"`segment_seconds` must be > 0 or None, got {segment_seconds}.")
    if min_seconds < 0:
        raise ValueError(f"`min_seconds` must be >= 0, got {min_seconds}.")
    if concat_short and segment_seconds is None:
        raise ValueError("`concat_short=True` needs `segment_seconds` (the length short clips are joined to).")
    if max_events < 2 and num_augmented_clips > 0:
        raise ValueError(f"`max_events` must be >= 2 for temporal augmentation, got {max_events}.")
    eps = 1e-6
    items: list[ClipItem] = []
    short: dict[bool, list[ClipPiece]] = {True: [], False: []}
    for index, source in enumerate(sources):
        duration = source_duration(source)
        if segment_seconds is None or duration <= segment_seconds + eps:
            if concat_short and duration < segment_seconds - eps:
                short[source.has_video].append(ClipPiece(index, 0.0, duration))
            elif duration >= min_seconds:
                items.append(ClipItem(source.id, source.caption, [ClipPiece(index, 0.0, duration)], duration, source.has_video))
            continue
        num_full = int(math.floor(duration / segment_seconds + eps))
        for k in range(num_full):
            start = k * segment_seconds
            items.append(
                ClipItem(
                    f"{source.id}@{start:g}",
                    source.caption,
                    [ClipPiece(index, start, segment_seconds)],
                    segment_seconds,
                    source.has_video,
                    kind="segment",
                )
            )
        tail = duration - num_full * segment_seconds
        if tail > eps:
            piece = ClipPiece(index, num_full * segment_seconds, tail)
            if concat_short:
                short[source.has_video].append(piece)
            elif tail >= min_seconds:
                items.append(
                    ClipItem(f"{source.id}@{piece.start:g}", source.caption, [piece], tail, source.has_video, kind="segment")
                )

    rng = np.random.default_rng([seed, 1])
    for has_video in (True, False):
        pool = short[has_video]
        order = rng.permutation(len(pool)) if pool else []
        queue = [pool[i] for i in order]
        group: list[ClipPiece] = []
        total = 0.0
        while queue:
            piece = queue.pop(0)
            take = min(piece.duration, segment_seconds - total)
            group.append(ClipPiece(piece.source_index, piece.start, take, offset=total))
            total += take
            if piece.duration - take > eps:
                # The rest of a piece cut at the segment end opens the next segment.
                queue.insert(0, ClipPiece(piece.source_index, piece.start + take, piece.duration - take))
            if total >= segment_seconds - eps or not queue:
                if total >= min_seconds:
                    captions = [sources[p.source_index].caption for p in group]
                    kind = "concat" if len(group) > 1 else "segment"
                    first = sources[group[0].source_index]
                    item_id = (
                        f"concat-{'v' if has_video else 'a'}{len(items)}"
                        if len(group) > 1
                        else f"{first.id}@{group[0].start:g}"
                    )
                    items.append(ClipItem(item_id, merge_captions(captions), group, total, has_video, kind=kind))
                group, total = [], 0.0

    if num_augmented_clips > 0:
        items.extend(_temporal_augmentation(sources, num_augmented_clips, max_events, segment_seconds, seed))
    if not items:
        raise ValueError(
            f"No item is at least `min_seconds`={min_seconds} s long; lower `min_seconds` or add longer clips."
        )
    return items


def _temporal_augmentation(
    sources: Sequence[ClipSource], num_clips: int, max_events: int, segment_seconds: float | None, seed: int
) -> list[ClipItem]:
    """Multi-event clips from single-event clips (paper 5.2, after Make-An-Audio 2)."""
    known = [s.num_events is not None for s in sources]
    if any(known):
        candidates = [i for i, s in enumerate(sources) if s.num_events == 1]
    else:
        # Without event annotations every clip is taken as one event.
        candidates = list(range(len(sources)))
    groups = {
        has_video: [i for i in candidates if sources[i].has_video == has_video] for has_video in (True, False)
    }
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        raise ValueError(
            "Temporal augmentation needs at least two single-event clips of the same kind (video or audio-only); "
            "mark single-event clips with an `events` list of length 1 in the metadata."
        )
    keys = sorted(groups)
    weights = np.array([len(groups[k]) for k in keys], dtype=np.float64)
    items = []
    for j in range(num_clips):
        rng = np.random.default_rng([seed, 2, j])
        has_video = keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
        pool = groups[has_video]
        k = int(rng.integers(2, min(max_events, len(pool)) + 1))
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
        # Video can only be joined in time; audio-only events may also overlap.
        rule = "sequence" if has_video or rng.random() < 0.5 else "overlay"
        durations = [source_duration(sources[i]) for i in chosen]
        pieces = []
        if rule == "sequence":
            budget = segment_seconds if segment_seconds is not None else sum(durations)
            share = budget / k
            offset = 0.0
            for i, d in zip(chosen, durations):
                take = min(d, share)
                start = float(rng.uniform(0.0, d - take)) if d > take else 0.0
                pieces.append(ClipPiece(i, start, take, offset=offset))
                offset += take
            duration = offset
        else:
            duration = min(max(durations), segment_seconds or max(durations))
            for i, d in zip(chosen, durations):
                take = min(d, duration)
                pieces.append(ClipPiece(i, 0.0, take, offset=float(rng.uniform(0.0, duration - take))))
        caption = merge_captions([sources[i].caption for i in chosen], rule)
        items.append(ClipItem(f"aug-{j}", caption, pieces, duration, has_video, kind=rule))
    return items


# ------------------------------------------------------------------------------------------------
# The clip dataset
# ------------------------------------------------------------------------------------------------


def _fit_samples(audio: torch.Tensor, num_samples: int) -> torch.Tensor:
    if audio.shape[-1] >= num_samples:
        return audio[..., :num_samples]
    return F.pad(audio, (0, num_samples - audio.shape[-1]))


class FoleyClipDataset(torch.utils.data.Dataset):
    r"""
    Clips of video + audio + caption (or audio + caption) for feature extraction and codec training.

    Args:
        sources (`list[ClipSource]`): The media (see `from_folder` / `from_hf_dataset`).
        segment_seconds (`float`, *optional*, defaults to 10): Cut longer clips into segments of this length
            (None: one item per clip, whatever its length).
        min_seconds (`float`, defaults to 1): Drop items (tails, lone short clips) shorter than this.
        concat_short (`bool`): Join clips shorter than a segment into full segments (captions merged).
        num_augmented_clips (`int`): Add this many temporally augmented multi-event clips.
        max_events (`int`): Most single-event clips in one augmented clip.
        load_video (`bool`): Decode video frames (False for audio-only training such as the codec).
        mono (`bool`): Mix audio to one channel (False keeps stereo for Mono2Stereo; mono sources are duplicated).
        sample_rate (`int`): Output sample rate.
        crop_seconds (`float`, *optional*): Return a random crop of this length (seeded by `seed`, the epoch and the
            index; shorter items are zero-padded) instead of the whole item — for codec training.
        crop_sampling (`str`, defaults to `"uniform"`): Where crops start. ``"uniform"``: anywhere. ``"energy"``: half
            of the crops start anywhere, the other half with probability proportional to the energy inside the crop
            (short-time energy over hops of 512 samples) — for sparse Foley clips (short loud events on a quiet bed),
            where uniform crops rarely contain an event and a codec trained on them learns the bed only.
        seed (`int`): Seed of the item plan, augmentation and crops.

    Each item is a dict: ``id`` (str), ``caption`` (str), ``audio`` float32 `(channels, num_samples)`,
    ``duration`` and ``seconds_start`` (float seconds), ``has_video`` / ``has_text`` (bool) and, for video clips
    with `load_video`, ``clip_frames`` uint8 `(clip_frames, 3, 224, 224)` at 8 fps and ``sync_frames`` uint8
    `(sync_frames, 3, 224, 224)` at 25 fps (lengths from `audio_utils.sequence_lengths(duration)`).
    """

    def __init__(
        self,
        sources: Sequence[ClipSource],
        segment_seconds: float | None = 10.0,
        min_seconds: float = 1.0,
        concat_short: bool = False,
        num_augmented_clips: int = 0,
        max_events: int = 3,
        load_video: bool = True,
        mono: bool = True,
        sample_rate: int = SAMPLE_RATE,
        crop_seconds: float | None = None,
        seed: int = 0,
        crop_sampling: str = "uniform",
    ):
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"`crop_seconds` must be > 0 or None, got {crop_seconds}.")
        if crop_sampling not in CROP_SAMPLINGS:
            raise ValueError(f"`crop_sampling` must be one of {CROP_SAMPLINGS}, got {crop_sampling!r}.")
        self.sources = list(sources)
        self.items = plan_items(
            self.sources, segment_seconds, min_seconds, concat_short, num_augmented_clips, max_events, seed
        )
        self.load_video = load_video
        self.mono = mono
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.crop_sampling = crop_sampling
        self.seed = seed
        self.epoch = 0
        self._audio_cache: tuple[int, torch.Tensor] | None = None

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, data_dir: str | os.PathLike, **kwargs) -> "FoleyClipDataset":
        """A dataset from a folder with ``metadata.jsonl`` / ``metadata.csv``."""
        return cls(sources_from_records(read_metadata(data_dir), data_dir), **kwargs)

    @classmethod
    def from_hf_dataset(
        cls,
        dataset,
        data_dir: str | os.PathLike | None = None,
        caption_column: str | None = None,
        video_column: str | None = None,
        audio_column: str | None = None,
        **kwargs,
    ) -> "FoleyClipDataset":
        """A dataset from a 🤗 `datasets.Dataset` (see `load_hf_dataset` for ``videofolder`` / ``audiofolder``).

        Columns are found by name when not given: caption `caption`/`text`; video `video`/`file_name` (paths,
        bytes or ``{"path", "bytes"}``); audio `audio`/`audio_file_name`/`audio_file` (paths, bytes, ``{"array",
        "sampling_rate"}``, ``{"path", "bytes"}`` or decoders). A video-column file with an audio extension is an
        audio-only clip. Relative paths are resolved against `data_dir` and must exist.

        ``Audio`` / ``Video`` columns are read with ``decode=False`` and decoded here (soundfile / PyAV), so no
        torchcodec is needed; a dataset without a video column (e.g. an ``audiofolder``) gives audio-only clips.
        """
        columns = set(dataset.column_names)

        def pick(given, candidates, what, required):
            if given is not None:
                if given not in columns:
                    raise ValueError(f"`{what}_column` {given!r} is not a column of the dataset ({sorted(columns)}).")
                return given
            for name in candidates:
                if name in columns:
                    return name
            if required:
                raise ValueError(f"The dataset has no {what} column (looked for {candidates}); pass `{what}_column`.")
            return None

        caption_column = pick(caption_column, ["caption", "text"], "caption", False)
        video_column = pick(video_column, ["video", "file_name"], "video", False)
        audio_column = pick(audio_column, ["audio", "audio_file_name", "audio_file"], "audio", False)
        if video_column is None and audio_column is None:
            raise ValueError(
                f"`dataset` has neither a video nor an audio column; name one with `video_column` or `audio_column` "
                f"(columns: {sorted(columns)})."
            )
        base = Path(data_dir) if data_dir is not None else None
        if base is not None and not base.is_dir():
            raise FileNotFoundError(f"`data_dir` {str(base)!r} is not a folder.")
        dataset = _without_media_decoding(dataset)
        sources, seen_ids = [], set()
        for index in range(len(dataset)):
            row = dataset[index]
            video, video_name = _hf_media(row[video_column], base, video_column, index) if video_column else (None, None)
            audio, audio_name = _hf_media(row[audio_column], base, audio_column, index) if audio_column else (None, None)
            if video is not None and video_name is not None and _is_audio_path(video_name):
                if audio is None:  # an audio-only clip named in the video column
                    audio, audio_name = video, video_name
                video = None
            if video is None and audio is None:
                raise ValueError(f"Row {index} has neither video nor audio.")
            # The `id` column, else the media's file name (as `from_folder` names clips), else the row number.
            media_name = video_name if video is not None else audio_name
            source_id = row.get("id")
            if source_id is None:
                source_id = Path(media_name).stem if media_name else index
            source_id = _safe_id(str(source_id))
            if source_id in seen_ids:
                source_id = f"{source_id}_{index}"
            seen_ids.add(source_id)
            sources.append(
                ClipSource(
                    id=source_id,
                    caption=str(row.get(caption_column) or "") if caption_column else "",
                    video=video,
                    audio=audio,
                    duration=_optional_float(row.get("duration")),
                    num_events=_num_events(row.get("events")),
                )
            )
        return cls(sources, **kwargs)

    # -- access -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Random crops depend on the epoch (called by the training loop)."""
        self.epoch = epoch

    @property
    def durations(self) -> list[float]:
        """Seconds of every item, in index order (for `LengthGroupedBatchSampler`)."""
        return [item.duration for item in self.items]

    def _source_audio(self, source_index: int) -> torch.Tensor:
        # Consecutive segments of one long file reuse its decoded audio.
        if self._audio_cache is not None and self._audio_cache[0] == source_index:
            return self._audio_cache[1]
        source = self.sources[source_index]
        if isinstance(source.audio, tuple):
            waveform, rate = source.audio
            waveform = resample(waveform.float(), rate, self.sample_rate)
        else:
            media = source.audio if source.audio is not None else source.video
            # A truncated file would be zero-padded to its planned (claimed) length: refuse it instead.
            waveform = load_audio(media, sample_rate=self.sample_rate, mono=False, on_truncated="raise")
        if self.mono:
            waveform = waveform.mean(0, keepdim=True)
        elif waveform.shape[0] == 1:
            waveform = waveform.expand(2, -1)
        else:
            waveform = waveform[:2]
        self._audio_cache = (source_index, waveform)
        return waveform

    def _item_audio(self, item: ClipItem) -> torch.Tensor:
        channels = 1 if self.mono else 2
        num_samples = sequence_lengths(item.duration, self.sample_rate)["num_samples"]
        out = torch.zeros(channels, num_samples)
        for piece in item.pieces:
            waveform = self._source_audio(piece.source_index)
            start = seconds_to_samples(piece.start, self.sample_rate)
            length = seconds_to_samples(piece.duration, self.sample_rate)
            chunk = _fit_samples(waveform[:, start : start + length], length)
            offset = seconds_to_samples(piece.offset, self.sample_rate)
            length = min(length, num_samples - offset)
            out[:, offset : offset + length] += chunk[:, :length]
        if item.kind == "overlay":
            peak = out.abs().max()
            if peak > 1.0:  # keep the mix in [-1, 1]
                out = out / peak
        return out

    def _item_video(self, item: ClipItem) -> tuple[torch.Tensor, torch.Tensor]:
        from .utils.video_io import load_video
        from .video_processor import fit_frames

        clips, syncs = [], []
        for piece in item.pieces:
            source = self.sources[piece.source_index]
            video = load_video(source.video, start_time=piece.start, max_duration=piece.duration, on_truncated="raise")
            lengths = sequence_lengths(piece.duration)
            clips.append(fit_frames(video.clip_frames, max(1, lengths["clip_frames"])))
            syncs.append(fit_frames(video.sync_frames, max(1, lengths["sync_frames"])))
        lengths = sequence_lengths(item.duration)
        # Pieces are laid out back to back ("sequence"/"concat"); fix rounding to the item's frame counts, with at
        # least one CLIP frame and one full Synchformer segment.
        clip_frames = fit_frames(torch.cat(clips), max(1, lengths["clip_frames"]))
        sync_frames = fit_frames(torch.cat(syncs), max(SYNC_SEGMENT_FRAMES, lengths["sync_frames"]))
        return clip_frames, sync_frames

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        audio = self._item_audio(item)
        example: dict[str, Any] = {
            "id": item.id,
            "caption": item.caption,
            "audio": audio,
            "duration": item.duration,
            "seconds_start": item.seconds_start,
            "has_video": item.has_video,
            "has_text": bool(item.caption.strip()),
        }
        if self.crop_seconds is not None:
            example["audio"], start = self._random_crop(audio, index)
            example["crop_start"] = start / self.sample_rate  # seconds into the item
            example["seconds_start"] = item.seconds_start + example["crop_start"]
            example["duration"] = self.crop_seconds
        elif self.load_video and item.has_video:
            example["clip_frames"], example["sync_frames"] = self._item_video(item)
        return example

    def _random_crop(self, audio: torch.Tensor, index: int) -> tuple[torch.Tensor, int]:
        crop = sequence_lengths(self.crop_seconds, self.sample_rate)["num_samples"]
        if audio.shape[-1] <= crop:
            return _fit_samples(audio, crop), 0
        rng = np.random.default_rng([self.seed, 3, self.epoch, index])
        max_start = audio.shape[-1] - crop
        if self.crop_sampling == "energy" and rng.random() < 0.5:
            start = _energy_weighted_start(audio, crop, rng)
            if start is not None:
                return audio[:, start : start + crop], start
        start = int(rng.integers(0, max_start + 1))
        return audio[:, start : start + crop], start


CROP_SAMPLINGS = ("uniform", "energy")


def _energy_weighted_start(audio: torch.Tensor, crop: int, rng: np.random.Generator, hop: int = 512) -> int | None:
    """A crop start drawn with probability proportional to the energy of `audio` `(channels, samples)` inside the
    crop, at `hop` granularity plus a uniform offset within the hop; None for a silent clip."""
    num_hops = audio.shape[-1] // hop
    energy = audio[:, : num_hops * hop].double().square().mean(0).reshape(num_hops, hop).sum(-1).numpy()
    crop_hops = max(1, crop // hop)
    max_start = audio.shape[-1] - crop
    num_starts = max_start // hop + 1  # hop-aligned starts that fit
    cumulative = np.concatenate([[0.0], np.cumsum(energy)])
    ends = np.minimum(np.arange(num_starts) + crop_hops, num_hops)
    window_energy = cumulative[ends] - cumulative[np.arange(num_starts)]
    total = window_energy.sum()
    if not np.isfinite(total) or total <= 0:
        return None
    first = int(rng.choice(num_starts, p=window_energy / total))
    return min(first * hop + int(rng.integers(0, hop)), max_start)


def collate_audio_crops(examples: list[dict]) -> dict[str, Any]:
    """Batch of equal-length crops: ``audio`` `(batch, channels, samples)` plus lists of ids and captions."""
    return {
        "audio": torch.stack([e["audio"] for e in examples]),
        "id": [e["id"] for e in examples],
        "caption": [e["caption"] for e in examples],
        "crop_start": torch.tensor([float(e.get("crop_start", 0.0)) for e in examples]),
    }


# ------------------------------------------------------------------------------------------------
# Cached features (written by training/extract_features.py)
# ------------------------------------------------------------------------------------------------


def feature_file_name(item_id: str) -> str:
    """The cached-feature file of item `item_id`: the id made file-system safe, plus ``.safetensors``."""
    return f"{_safe_id(item_id)}.safetensors"


class CachedFeatureDataset(torch.utils.data.Dataset):
    r"""
    Features cached by ``training/extract_features.py``: one safetensors file per item with

    - ``latents_mean``, ``latents_std`` `(latent_channels, latent_frames)`: the MelVAE posterior (raw, not
      normalised: training samples ``mean + std * eps`` and normalises with the VAE's statistics),
    - ``text_embeds`` `(text_tokens, text_dim)` and ``text_mask`` `(text_tokens,)` (T5), when the item has a caption,
    - ``clip_features`` `(clip_frames, clip_dim)`, ``sync_features`` `(sync_tokens, sync_dim)`, for video items,
    - ``stereo_mel`` `(2, mel_bins, mel_frames)` (optional, Mono2Stereo),

    and ``index.jsonl`` listing ``id``, ``file``, ``duration``, ``seconds_start``, ``latent_frames``,
    ``has_video``, ``has_text``, ``caption``.
    """

    def __init__(self, cache_dir: str | os.PathLike, require_video: bool = False):
        self.cache_dir = Path(cache_dir)
        index_file = self.cache_dir / FEATURE_INDEX_NAME
        if not index_file.is_file():
            raise FileNotFoundError(
                f"`cache_dir` {str(self.cache_dir)!r} has no {FEATURE_INDEX_NAME}: run training/extract_features.py first."
            )
        with open(index_file, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        if require_video:
            entries = [e for e in entries if e["has_video"]]
        if not entries:
            raise ValueError(f"`cache_dir` {str(self.cache_dir)!r} lists no usable item in {FEATURE_INDEX_NAME}.")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def lengths(self) -> list[int]:
        """Latent frames of every item (what `LengthGroupedBatchSampler` groups by)."""
        return [int(e["latent_frames"]) for e in self.entries]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        entry = self.entries[index]
        tensors = load_file(str(self.cache_dir / entry["file"]))
        return {**tensors, **{k: entry[k] for k in ("id", "duration", "seconds_start", "has_video", "has_text", "caption")}}


def collate_features(examples: list[dict], clip_dim: int | None = None, sync_dim: int | None = None) -> dict[str, Any]:
    r"""
    Batch cached features of any durations: pads to the longest item and returns masks.

    Returns a dict with ``latents_mean``/``latents_std`` `(batch, channels, frames)`, ``latent_mask``
    `(batch, frames)` (True = real frame), ``text_embeds`` `(batch, tokens, dim)` + ``text_mask`` `(batch, tokens)`
    (or None when no item has text), ``clip_features`` / ``sync_features`` `(batch, frames, dim)` (or None when no
    item has video; zeros for audio-only items), ``has_text`` / ``has_video`` bool `(batch,)`, ``duration`` and
    ``seconds_start`` float `(batch,)`, ``stereo_mel`` when every item has it, and ``id``/``caption`` lists.
    """
    from .training_utils import pad_sequences

    batch: dict[str, Any] = {}
    # Latents are (channels, frames): pad along frames.
    means, latent_mask = pad_sequences([e["latents_mean"].transpose(0, 1) for e in examples])
    stds, _ = pad_sequences([e["latents_std"].transpose(0, 1) for e in examples], pad_value=1.0)
    batch["latents_mean"] = means.transpose(1, 2).contiguous()
    batch["latents_std"] = stds.transpose(1, 2).contiguous()
    batch["latent_mask"] = latent_mask
    batch["has_text"] = torch.tensor([bool(e["has_text"]) and "text_embeds" in e for e in examples])
    batch["has_video"] = torch.tensor([bool(e["has_video"]) and "clip_features" in e for e in examples])
    batch["duration"] = torch.tensor([float(e["duration"]) for e in examples])
    batch["seconds_start"] = torch.tensor([float(e["seconds_start"]) for e in examples])
    batch["id"] = [e["id"] for e in examples]
    batch["caption"] = [e["caption"] for e in examples]

    if batch["has_text"].any():
        reference = next(e for e in examples if "text_embeds" in e)
        texts, masks = [], []
        for e in examples:
            if "text_embeds" in e:
                texts.append(e["text_embeds"])
                masks.append(e["text_mask"].bool())
            else:  # dropped to the empty embedding by `has_text`; one masked-out token keeps shapes valid
                texts.append(torch.zeros(1, reference["text_embeds"].shape[-1], dtype=reference["text_embeds"].dtype))
                masks.append(torch.zeros(1, dtype=torch.bool))
        batch["text_embeds"], _ = pad_sequences(texts)
        batch["text_mask"], _ = pad_sequences(masks)
    else:
        batch["text_embeds"] = batch["text_mask"] = None

    for name, dim, rate_key in (("clip_features", clip_dim, "clip_frames"), ("sync_features", sync_dim, "sync_tokens")):
        if not batch["has_video"].any():
            batch[name] = None
            continue
        reference = next(e for e in examples if name in e)
        features = []
        for e in examples:
            if name in e:
                features.append(e[name])
            else:  # audio-only item in a mixed batch: zeros of its length, replaced by the empty embedding
                length = max(1, sequence_lengths(float(e["duration"]))[rate_key])
                features.append(torch.zeros(length, dim or reference[name].shape[-1], dtype=reference[name].dtype))
        batch[name], _ = pad_sequences(features)

    if all("stereo_mel" in e for e in examples):
        mels, _ = pad_sequences([e["stereo_mel"].permute(2, 0, 1) for e in examples])
        batch["stereo_mel"] = mels.permute(0, 2, 3, 1).contiguous()
    return batch


# ------------------------------------------------------------------------------------------------
# Batch samplers
# ------------------------------------------------------------------------------------------------


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    r"""
    Seeded batches whose order depends only on ``(seed, epoch)`` (so a resumed run sees the same batches).

    Args:
        lengths (`list[int]`): Sequence length of each item (latent frames).
        batch_size (`int`): Items per batch.
        group_by_length (`bool`, defaults to True): "bucket" mode — every batch holds items of one length only (no
            padding, no masking; the transformer has no audio padding mask, so this is exact). False: "pad" mode —
            any items together, padded to the longest and masked in the loss (padded frames still take part in
            attention).
        shuffle (`bool`): Shuffle items and batches every epoch.
        drop_last (`bool`): Drop incomplete batches (per bucket in bucket mode).
        seed (`int`): Seed of the order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        group_by_length: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if len(lengths) == 0:
            raise ValueError("`lengths` must not be empty.")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, 4, self.epoch])
        indices = np.arange(len(self.lengths))
        if self.shuffle:
            indices = rng.permutation(indices)
        if self.group_by_length:
            groups: dict[int, list[int]] = {}
            for i in indices.tolist():
                groups.setdefault(self.lengths[i], []).append(i)
            pools = [groups[length] for length in sorted(groups)]
        else:
            pools = [indices.tolist()]
        batches = []
        for pool in pools:
            for start in range(0, len(pool), self.batch_size):
                batch = pool[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
