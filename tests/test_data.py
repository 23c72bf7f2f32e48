"""Training data: metadata formats, 10-second segmenting, joining short clips, temporal augmentation, crops,
video items, 🤗 datasets input, cached-feature batches and the seeded batch sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from foley_toolkit.audio_utils import sequence_lengths
from foley_toolkit.data import (
    FoleyClipDataset,
    LengthGroupedBatchSampler,
    collate_features,
    merge_captions,
    plan_items,
    read_metadata,
    sources_from_records,
)

SR = 44_100


def _ramp(seconds: float, offset: float) -> np.ndarray:
    """A signal whose every sample is distinct and known: offset + sample index / 1e6."""
    return (offset + np.arange(int(round(seconds * SR))) / 1e6).astype(np.float32)


@pytest.fixture
def audio_dir(tmp_path):
    """Audio-only clips (exact float wavs) with a metadata.jsonl: one long clip and three short single-event clips."""
    clips = {"long.wav": (3.5, 0.0, "rain on a roof", 3), "a.wav": (0.4, 0.1, "a door slams", 1),
             "b.wav": (0.5, 0.2, "a dog barks", 1), "c.wav": (0.7, 0.3, "glass breaks", 1)}  # fmt: skip
    rows = []
    for name, (seconds, offset, caption, events) in clips.items():
        sf.write(tmp_path / name, _ramp(seconds, offset), SR, subtype="FLOAT")
        rows.append({"file_name": name, "caption": caption, "events": [{"class": "x"}] * events})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_metadata_jsonl_and_csv_give_the_same_sources(audio_dir, tmp_path_factory):
    rows = read_metadata(audio_dir)
    assert [r["file_name"] for r in rows] == ["long.wav", "a.wav", "b.wav", "c.wav"]
    csv_dir = tmp_path_factory.mktemp("csv")
    for row in rows:
        (csv_dir / row["file_name"]).write_bytes((audio_dir / row["file_name"]).read_bytes())
    (csv_dir / "metadata.csv").write_text(
        "file_name,caption\n" + "".join(f"{r['file_name']},{r['caption']}\n" for r in rows)
    )
    from_csv = sources_from_records(read_metadata(csv_dir), csv_dir)
    from_jsonl = sources_from_records(rows, audio_dir)
    assert [s.caption for s in from_csv] == [s.caption for s in from_jsonl]
    assert all(s.video is None and s.audio.endswith(".wav") for s in from_jsonl)  # audio-only clips
    assert [s.num_events for s in from_jsonl] == [3, 1, 1, 1] and from_csv[0].num_events is None

    with pytest.raises(FileNotFoundError, match="missing.wav"):
        sources_from_records([{"file_name": "missing.wav", "caption": ""}], audio_dir)
    with pytest.raises(FileNotFoundError, match="metadata"):
        read_metadata(tmp_path_factory.mktemp("empty"))


def test_long_clips_are_cut_into_segments_with_exact_audio(audio_dir):
    dataset = FoleyClipDataset.from_folder(audio_dir, segment_seconds=1.0, min_seconds=0.45, load_video=False)
    items = {item.id: item for item in dataset.items}
    # 3.5 s -> three 1 s segments and a 0.5 s tail; the 0.4 s clip is below min_seconds.
    assert [i for i in items if i.startswith("long")] == ["long@0", "long@1", "long@2", "long@3"]
    assert "a" not in items and {"b", "c"} <= set(items)
    source = _ramp(3.5, 0.0)
    for k in range(4):
        example = dataset[dataset.items.index(items[f"long@{k}"])]
        expected = source[k * SR : (k + 1) * SR]
        assert example["audio"].shape == (1, len(expected))
        np.testing.assert_array_equal(example["audio"][0].numpy(), expected)
        assert example["seconds_start"] == float(k) and example["caption"] == "rain on a roof"
        assert example["has_text"] and not example["has_video"] and "clip_frames" not in example


def test_short_clips_are_joined_into_full_segments(audio_dir):
    dataset = FoleyClipDataset.from_folder(
        audio_dir, segment_seconds=1.0, min_seconds=0.05, concat_short=True, load_video=False, seed=0
    )
    joined = [item for item in dataset.items if item.id not in ("long@0", "long@1", "long@2")]
    # 0.4 + 0.5 + 0.7 s and the 0.5 s tail of the long clip = 2.1 s -> 1 s, 1 s, 0.1 s; a clip cut at a segment end
    # continues in the next segment, so every second of short audio is used exactly once.
    assert sorted(round(item.duration, 6) for item in joined) == [0.1, 1.0, 1.0]
    assert abs(sum(p.duration for item in joined for p in item.pieces) - 2.1) < 1e-6
    for item in joined:
        example = dataset[dataset.items.index(item)]
        expected = []
        for piece in item.pieces:
            source = sf.read(dataset.sources[piece.source_index].audio, dtype="float32")[0]
            start = int(round(piece.start * SR))
            expected.append(source[start : start + int(round(piece.duration * SR))])
        expected = np.concatenate(expected)
        assert example["audio"].shape == (1, sequence_lengths(item.duration)["num_samples"])
        n = min(len(expected), example["audio"].shape[-1])
        np.testing.assert_array_equal(example["audio"][0, :n].numpy(), expected[:n])
        captions = [dataset.sources[p.source_index].caption for p in item.pieces]
        assert example["caption"] == merge_captions(captions)
    assert any(item.kind == "concat" and ", then " in item.caption for item in joined)


def test_temporal_augmentation_is_seeded_and_uses_single_event_clips(audio_dir):
    kwargs = dict(segment_seconds=1.0, min_seconds=0.1, num_augmented_clips=6, max_events=3, load_video=False)
    first = FoleyClipDataset.from_folder(audio_dir, seed=0, **kwargs)
    again = FoleyClipDataset.from_folder(audio_dir, seed=0, **kwargs)
    other = FoleyClipDataset.from_folder(audio_dir, seed=1, **kwargs)
    augmented = [item for item in first.items if item.id.startswith("aug-")]
    assert len(augmented) == 6
    assert [(i.caption, [p.start for p in i.pieces]) for i in augmented] == [
        (i.caption, [p.start for p in i.pieces]) for i in again.items if i.id.startswith("aug-")
    ]
    assert [i.caption for i in augmented] != [i.caption for i in other.items if i.id.startswith("aug-")]
    single_event = {1, 2, 3}  # a, b, c; the long clip has 3 events and is never used
    for item in augmented:
        assert {p.source_index for p in item.pieces} <= single_event and 2 <= len(item.pieces) <= 3
        captions = [first.sources[p.source_index].caption for p in item.pieces]
        assert item.caption == merge_captions(captions, "sequence" if item.kind == "sequence" else "overlay")
        example = first[first.items.index(item)]
        assert example["audio"].shape[-1] == sequence_lengths(item.duration)["num_samples"]
        if item.kind == "overlay":  # events at the same time: the mix is the sum of the pieces
            mix = torch.zeros_like(example["audio"][0])
            for p in item.pieces:
                source = torch.from_numpy(sf.read(first.sources[p.source_index].audio, dtype="float32")[0])
                offset, length = int(round(p.offset * SR)), int(round(p.duration * SR))
                mix[offset : offset + length] += source[:length][: mix.shape[0] - offset]
            torch.testing.assert_close(example["audio"][0], mix / max(1.0, mix.abs().max().item()))
    assert {item.kind for item in augmented} == {"sequence", "overlay"}


def test_random_crops_depend_on_seed_epoch_and_index_only(audio_dir):
    dataset = FoleyClipDataset.from_folder(
        audio_dir, segment_seconds=None, min_seconds=0.1, load_video=False, crop_seconds=0.25, seed=3
    )
    long_index = next(i for i, item in enumerate(dataset.items) if item.id == "long")
    crop = dataset[long_index]
    assert crop["audio"].shape == (1, sequence_lengths(0.25)["num_samples"])
    start = int(round(crop["crop_start"] * SR))
    np.testing.assert_array_equal(crop["audio"][0].numpy(), _ramp(3.5, 0.0)[start : start + crop["audio"].shape[-1]])
    torch.testing.assert_close(dataset[long_index]["audio"], crop["audio"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[long_index]["audio"], crop["audio"])
    short = dataset[next(i for i, item in enumerate(dataset.items) if item.id == "a")]
    assert short["audio"].shape == crop["audio"].shape  # shorter than the crop: zero-padded


def test_energy_crops_find_the_loud_event_and_stay_seeded():
    """`crop_sampling="energy"`: on a quiet bed with one short loud burst, far more crops contain the burst than
    with uniform starts (about half vs ~10%), yet crops still depend on (seed, epoch, index) only."""
    from foley_toolkit.data import ClipSource

    seconds, burst = 4.0, (int(3.0 * SR), int(3.1 * SR))
    waveform = torch.from_numpy(np.random.default_rng(0).standard_normal((1, int(seconds * SR))).astype(np.float32))
    waveform *= 1e-3
    waveform[:, burst[0] : burst[1]] *= 500.0
    sources = [ClipSource(id="bed", caption="", audio=(waveform, SR), duration=seconds)]

    def dataset(sampling, seed=0):
        kwargs = dict(segment_seconds=None, load_video=False, crop_seconds=0.25, seed=seed, crop_sampling=sampling)
        return FoleyClipDataset(sources, **kwargs)

    def starts(data, epochs=range(120)):
        found = []
        for epoch in epochs:
            data.set_epoch(epoch)
            found.append(int(round(data[0]["crop_start"] * SR)))
        return np.array(found)

    crop = sequence_lengths(0.25)["num_samples"]
    hits = {}
    for sampling in ("uniform", "energy"):
        found = starts(dataset(sampling))
        assert found.min() >= 0 and found.max() <= waveform.shape[-1] - crop
        hits[sampling] = np.mean((found < burst[1]) & (found + crop > burst[0]))
    assert hits["uniform"] < 0.2 and hits["energy"] > 0.4, hits
    energy = dataset("energy")
    np.testing.assert_array_equal(starts(energy), starts(dataset("energy")))  # same seed and epochs: same crops
    assert not np.array_equal(starts(energy), starts(dataset("energy", seed=1)))
    energy.set_epoch(7)
    item = energy[0]
    start = int(round(item["crop_start"] * SR))
    torch.testing.assert_close(item["audio"], waveform[:, start : start + crop])
    silent = [ClipSource(id="silent", caption="", audio=(torch.zeros(1, int(seconds * SR)), SR), duration=seconds)]
    assert FoleyClipDataset(silent, segment_seconds=None, load_video=False, crop_seconds=0.25,
                            crop_sampling="energy")[0]["audio"].abs().max() == 0  # fmt: skip
    with pytest.raises(ValueError, match="crop_sampling"):
        dataset("loudest")


def test_video_items_have_frames_for_their_duration(tmp_path):
    from utils import make_test_video

    make_test_video(tmp_path / "clip.mp4", duration=2.4, fps=30, audio=True)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "clip.mp4", "caption": "a beep"}) + "\n")
    dataset = FoleyClipDataset.from_folder(tmp_path, segment_seconds=1.0, min_seconds=0.3)
    assert [item.id for item in dataset.items] == ["clip@0", "clip@1", "clip@2"]
    tail = dataset[2]
    lengths = sequence_lengths(tail["duration"])
    assert abs(tail["duration"] - 0.4) < 1e-6 and tail["has_video"]
    assert tail["clip_frames"].shape == (lengths["clip_frames"], 3, 224, 224) and tail["clip_frames"].dtype == torch.uint8
    assert tail["sync_frames"].shape == (16, 3, 224, 224)  # at least one Synchformer segment
    assert tail["audio"].shape == (1, lengths["num_samples"])
    first = dataset[0]
    assert first["sync_frames"].shape[0] == 25 and first["clip_frames"].shape[0] == 8
    assert first["audio"].abs().max() > 0.05  # the 440 Hz tone of the video's audio track
    stereo = FoleyClipDataset.from_folder(tmp_path, segment_seconds=1.0, load_video=False, mono=False)
    assert stereo[0]["audio"].shape == (2, SR)


def test_hf_dataset_with_decoded_audio_arrays_is_resampled():
    import datasets

    rows = {
        "audio": [{"array": np.linspace(-0.5, 0.5, 22_050).astype(np.float32), "sampling_rate": 22_050}],
        "text": ["a low hum"],
    }
    dataset = FoleyClipDataset.from_hf_dataset(datasets.Dataset.from_dict(rows), segment_seconds=None, load_video=False)
    example = dataset[0]
    assert example["caption"] == "a low hum" and not example["has_video"]
    assert example["audio"].shape == (1, SR) and abs(example["duration"] - 1.0) < 1e-9
    with pytest.raises(ValueError, match="caption_column"):
        FoleyClipDataset.from_hf_dataset(datasets.Dataset.from_dict(rows), caption_column="title")


def test_bucketed_batches_hold_one_length_and_are_reproducible():
    lengths = [43, 86, 43, 86, 86, 65, 43, 86, 43]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=2, seed=5)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert len(sampler) == len(batches) == 5  # 43 x4 -> 2, 86 x4 -> 2, 65 x1 -> 1
    assert list(LengthGroupedBatchSampler(lengths, batch_size=2, seed=5)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    padded = LengthGroupedBatchSampler(lengths, batch_size=3, group_by_length=False, seed=5)
    assert len(list(padded)) == 3 and any(len({lengths[i] for i in b}) > 1 for b in padded)


def test_collate_pads_features_and_marks_missing_modalities():
    def item(frames, text_tokens=None, video=True, duration=1.0):
        example = {"latents_mean": torch.randn(4, frames), "latents_std": torch.rand(4, frames) + 0.1, "id": "x",
                   "duration": duration, "seconds_start": 0.0, "caption": "", "has_text": text_tokens is not None,
                   "has_video": video}  # fmt: skip
        if text_tokens:
            example["text_embeds"] = torch.randn(text_tokens, 6)
            example["text_mask"] = torch.ones(text_tokens, dtype=torch.int8)
        if video:
            lengths = sequence_lengths(duration)
            example["clip_features"] = torch.randn(lengths["clip_frames"], 5)
            example["sync_features"] = torch.randn(lengths["sync_tokens"], 3)
        return example

    examples = [item(43, text_tokens=3, duration=1.0), item(65, text_tokens=None, duration=1.5), item(30, 5, video=False, duration=0.7)]
    batch = collate_features(examples)
    assert batch["latents_mean"].shape == (3, 4, 65) and batch["latent_mask"].sum(1).tolist() == [43, 65, 30]
    torch.testing.assert_close(batch["latents_mean"][0, :, :43], examples[0]["latents_mean"])
    assert bool((batch["latents_std"][0, :, 43:] == 1).all())
    assert batch["has_text"].tolist() == [True, False, True] and batch["has_video"].tolist() == [True, True, False]
    assert batch["text_embeds"].shape == (3, 5, 6)
    assert batch["text_mask"].tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5]
    # 1.5 s: 12 CLIP frames, 37 sync frames -> 3 segments -> 24 tokens.
    assert batch["clip_features"].shape == (3, 12, 5) and batch["sync_features"].shape == (3, 24, 3)
    assert bool((batch["clip_features"][2] == 0).all())  # audio-only item: zeros, replaced by the empty embedding
    audio_only = collate_features([item(10, 2, video=False)])
    assert audio_only["clip_features"] is None and audio_only["sync_features"] is None


def test_plan_rejects_bad_arguments(audio_dir):
    sources = sources_from_records(read_metadata(audio_dir), audio_dir)
    with pytest.raises(ValueError, match="segment_seconds"):
        plan_items(sources, segment_seconds=0)
    with pytest.raises(ValueError, match="concat_short"):
        plan_items(sources, segment_seconds=None, concat_short=True)
    with pytest.raises(ValueError, match="min_seconds"):
        plan_items(sources, segment_seconds=None, min_seconds=10.0)
    with pytest.raises(ValueError, match="single-event"):
        plan_items(sources[:2], segment_seconds=None, min_seconds=0.1, num_augmented_clips=1)
