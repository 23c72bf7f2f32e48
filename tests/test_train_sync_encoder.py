"""`training/train_sync_encoder.py`: Synchformer's offset objective trains the pipeline's sync encoder.

Tiny encoder (32 px), one- or two-segment windows and 3 offset classes, on synthetic clips. Each test names what it
checks: the pairs are cut at the right offsets, outputs and the swapped pipeline, exact resume, that a short run
separates aligned from shifted held-out pairs, and errors that name the flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_fixtures import (  # noqa: F401  (fixtures)
    clip_data_dir,
    fresh_accelerate_state,
    load_safetensors_dir,
    reset_accelerate_state,
    tiny_pipeline_dir,
)

# One 16-frame segment, offsets -0.16 / 0 / +0.16 s: windows need 0.96 s of video (the fixture clips are 1-2.2 s).
TINY_ARGS = ["--num_segments", 1, "--num_offset_classes", 3, "--offset_step", 0.16, "--head_hidden_size", 16,
             "--head_heads", 2, "--audio_channels", 32, "--audio_layers", 1, "--train_batch_size", 2]  # fmt: skip


def _run(argv: list) -> dict:
    import train_sync_encoder

    result = train_sync_encoder.main(train_sync_encoder.parse_args([str(a) for a in argv]))
    reset_accelerate_state()
    return result


@pytest.fixture(scope="module")
def learnable_clips(tmp_path_factory) -> tuple[Path, Path]:
    """Train / held-out synthetic clips (different seeds) at 25 fps, 32 px, with events that light up the frame."""
    from foley_toolkit.synthetic import generate_dataset

    folders = []
    for name, seed, count in (("train", 11, 12), ("heldout", 12, 6)):
        path = tmp_path_factory.mktemp(name)
        generate_dataset(path, num_clips=count, seed=seed, min_duration=2.5, max_duration=3.0, fps_choices=(25,),
                         width=32, height=32, event_classes=("flash", "beep"), max_events=3)  # fmt: skip
        folders.append(path)
    return folders[0], folders[1]


def test_pairs_are_cut_at_the_class_offsets(tiny_pipeline_dir, clip_data_dir, tmp_path):
    """Item = the clip's frames at the window and its audio shifted by exactly the class offset (1764 samples per
    25 fps frame); validation items hold the audio at every offset; the disk cache gives the same clip back."""
    import train_sync_encoder as script

    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--output_dir", tmp_path,
            "--cache_dir", tmp_path / "cache", *TINY_ARGS]  # fmt: skip
    args = script.parse_args([str(a) for a in argv])
    encoder = script.load_sync_encoder(args)
    dataset = script.build_window_dataset(args, encoder)
    assert script.offset_frames(args) == [-4, 0, 4]
    assert len(dataset) == len(dataset.eligible) >= 3
    labels = set()
    for index in range(len(dataset)):
        clip, start, label = dataset.window(index)
        item = dataset[index]
        frames, audio = dataset.clip_data(clip)
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (16, 3, 32, 32)
        assert torch.equal(item["frames"], frames[start : start + 16])
        audio_start = (start + [-4, 0, 4][label]) * 1764
        assert audio_start >= 0 and audio_start + 16 * 1764 <= audio.shape[0]
        assert torch.equal(item["audio"], audio[audio_start : audio_start + 16 * 1764])
        assert torch.equal(item["audio_aligned"], audio[start * 1764 : (start + 16) * 1764])
        labels.add(label)
    assert float(audio.abs().max()) > 0.01  # real sound, not silence
    # The window plan depends on the epoch (new windows each epoch) and is reproducible.
    dataset.set_epoch(1)
    epoch1 = [dataset.window(i) for i in range(len(dataset))]
    dataset.set_epoch(0)
    assert epoch1 != [dataset.window(i) for i in range(len(dataset))]
    dataset.set_epoch(1)
    assert epoch1 == [dataset.window(i) for i in range(len(dataset))]

    # Frames follow the pipeline's transform (preprocess_sync_frames + bilinear resize), stored as uint8.
    from foley_toolkit.video_processor import preprocess_sync_frames

    example = dataset.clips[dataset.eligible[0]]
    expected = torch.nn.functional.interpolate(preprocess_sync_frames(example["sync_frames"]), size=(32, 32),
                                               mode="bilinear", antialias=True)  # fmt: skip
    stored = script.frames_to_encoder_input(dataset.clip_data(dataset.eligible[0])[0])
    assert (stored - expected).abs().max() <= 0.5 / 127.5 + 1e-6

    # A second dataset reads the cache folder instead of decoding, and gets the same tensors.
    cached = script.build_window_dataset(args, encoder)
    for clip in dataset.eligible:
        for a, b in zip(cached.clip_data(clip), dataset.clip_data(clip)):
            assert torch.equal(a, b)
    assert cached.decode_seconds == 0.0 and dataset.decode_seconds > 0.0

    validation = script.build_window_dataset(args, encoder, str(clip_data_dir), validation=True)
    item = validation[0]
    clip, start = validation.plan[0]
    _, audio = validation.clip_data(clip)
    assert torch.equal(item["label"], torch.arange(3)) and item["audio"].shape == (3, 16 * 1764)
    for label, shift in enumerate([-4, 0, 4]):
        assert torch.equal(item["audio"][label], audio[(start + shift) * 1764 : (start + shift + 16) * 1764])


def test_two_steps_write_encoder_head_and_swapped_pipeline(tmp_path, tiny_pipeline_dir, clip_data_dir):
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder
    from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead

    out = tmp_path / "run"
    result = _run(["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir",
                   clip_data_dir, "--validation_data_dir", clip_data_dir, "--output_dir", out, "--max_train_steps", 2,
                   "--learning_rate", 1e-3, *TINY_ARGS])  # fmt: skip
    assert result["global_step"] == 2 and [h["step"] for h in result["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"])
    validation = result["validation"]
    assert validation["step"] == 2 and validation["num_pairs"] % 3 == 0 and validation["num_pairs"] > 0
    assert 0.0 <= validation["offset_accuracy"] <= 1.0 and validation["chance_accuracy"] == pytest.approx(1 / 3)
    assert (out / "validation.json").is_file() and (out / "checkpoint-2").is_dir()

    base = SynchformerEncoder.from_pretrained(tiny_pipeline_dir / "sync_encoder")
    trained = SynchformerEncoder.from_pretrained(out / "sync_encoder")
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), trained.state_dict().values()))
    head = SynchformerSyncHead.from_pretrained(out / "sync_head")
    assert head.config.visual_dim == trained.config.hidden_size and head.config.num_classes == 3
    # The pipeline holds the trained encoder; every other component is the base pipeline's (weights and config; the
    # saved configs add `_name_or_path`, the folder they were loaded from, as diffusers' `from_pretrained` records).
    swapped = load_safetensors_dir(out / "pipeline" / "sync_encoder")
    for key, value in load_safetensors_dir(out / "sync_encoder").items():
        assert torch.equal(swapped[key], value)
    for name in ("transformer", "vae", "vocoder", "mono2stereo"):
        saved = load_safetensors_dir(out / "pipeline" / name)
        base_weights = load_safetensors_dir(tiny_pipeline_dir / name)
        assert saved.keys() == base_weights.keys() and all(torch.equal(saved[k], base_weights[k]) for k in saved)
        config = json.loads((out / "pipeline" / name / "config.json").read_text())
        config.pop("_name_or_path", None)
        assert config == json.loads((tiny_pipeline_dir / name / "config.json").read_text())
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    index.pop("_name_or_path", None)
    assert index == json.loads((tiny_pipeline_dir / "model_index.json").read_text())


def test_resume_at_step_one_matches_uninterrupted_two_step_run(tmp_path, tiny_pipeline_dir, clip_data_dir):
    full, parts = tmp_path / "full", tmp_path / "parts"
    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--learning_rate", 1e-3,
            "--checkpointing_steps", 1, *TINY_ARGS]  # fmt: skip
    full_result = _run([*argv, "--output_dir", full, "--max_train_steps", 2])
    _run([*argv, "--output_dir", parts, "--max_train_steps", 1])
    resumed = _run([*argv, "--output_dir", parts, "--max_train_steps", 2, "--resume_from_checkpoint", "latest"])
    assert [h["step"] for h in resumed["history"]] == [2]
    assert resumed["history"][0]["loss"] == full_result["history"][1]["loss"]
    for sub in ("sync_encoder", "sync_head"):
        expected = load_safetensors_dir(full / "checkpoint-2" / sub)
        actual = load_safetensors_dir(parts / "checkpoint-2" / sub)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    # ... and the run did move the weights (the comparison above is not between two untouched copies).
    first = load_safetensors_dir(parts / "checkpoint-1" / "sync_encoder")
    last = load_safetensors_dir(full / "checkpoint-2" / "sync_encoder")
    assert any(not torch.equal(first[k], v) for k, v in last.items())


def test_short_run_separates_aligned_from_shifted_heldout_pairs(tmp_path, learnable_clips):
    """A tiny encoder trained from scratch for a few seconds beats chance on held-out clips (other seeds): the
    offset accuracy over 3 classes and the AUC of the zero-offset score for aligned vs shifted pairs."""
    train, heldout = learnable_clips
    result = _run(["--sync_encoder_config", "tiny", "--data_dir", train, "--validation_data_dir", heldout,
                   "--output_dir", tmp_path, "--num_segments", 2, "--num_offset_classes", 3, "--offset_step", 0.24,
                   "--head_hidden_size", 16, "--head_heads", 2, "--audio_channels", 32, "--audio_layers", 1,
                   "--train_batch_size", 8, "--windows_per_clip", 4, "--learning_rate", 1e-3,
                   "--max_train_steps", 60, "--validation_steps", 1000, "--validation_windows", 6,
                   "--checkpointing_steps", 1000, "--seed", 0])  # fmt: skip
    validation = result["validation"]
    assert validation["num_pairs"] == 6 * 6 * 3
    assert validation["offset_accuracy"] > 0.55, validation  # chance 1/3
    assert validation["aligned_auc"] > 0.7, validation  # chance 0.5


def test_bad_arguments_raise_errors_that_name_them(tmp_path, tiny_pipeline_dir, clip_data_dir):
    import train_sync_encoder as script

    base = ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(clip_data_dir),
            "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match="--num_offset_classes"):
        script.parse_args([*base, "--num_offset_classes", "4"])
    with pytest.raises(ValueError, match="--offset_step"):
        script.parse_args([*base, "--offset_step", "0.05"])
    with pytest.raises(ValueError, match="--num_segments"):
        script.parse_args([*base, "--num_segments", "0"])
    with pytest.raises(FileNotFoundError, match="--validation_data_dir"):
        script.parse_args([*base, "--validation_data_dir", str(tmp_path / "missing")])
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        script.parse_args(["--sync_encoder_config", "tiny", "--data_dir", str(tmp_path / "missing"),
                           "--output_dir", str(tmp_path)])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="--sync_encoder_config"):
        script.load_sync_encoder(script.parse_args([*base, "--sync_encoder_config", "no-such-preset"]))
    with pytest.raises(ValueError, match="--pretrained_model_name_or_path"):
        script.load_sync_encoder(script.parse_args(["--data_dir", str(clip_data_dir), "--output_dir", str(tmp_path)]))
    # Windows longer than every clip (16 segments = 2.8 s, the clips are at most 2.2 s).
    args = script.parse_args([*base, "--num_segments", "16"])
    with pytest.raises(ValueError, match="--num_segments"):
        script.build_window_dataset(args, script.load_sync_encoder(args))


def test_sync_head_aligns_audio_and_video_steps():
    """Audio token 8 s + t covers the same time as video token 8 s + t (overlapping segments share tokens); the
    visual grid averages the two segment tokens of a step; the correlation at lag l compares visual step i with audio
    step i + l; bad shapes are refused by name."""
    from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead

    torch.manual_seed(0)
    head = SynchformerSyncHead(visual_dim=16, num_classes=5, audio_channels=8, audio_layers=1, hidden_size=8,
                               num_heads=2, max_lag=3).eval()  # fmt: skip
    mel = torch.randn(2, 128, 110)  # 1.28 s of log-mel: 3 segments, 16 tubelet steps
    tokens = head.encode_audio(mel, num_segments=3)
    assert tokens.shape == (2, 24, 8) and head.audio_grid(mel, 3).shape == (2, 16, 8)
    for segment in range(2):  # the second half of segment s is the first half of segment s + 1
        following = 8 * (segment + 1)
        torch.testing.assert_close(tokens[:, 8 * segment + 4 : 8 * segment + 8], tokens[:, following : following + 4])
    visual = torch.randn(2, 24, 16)
    grid = head.visual_grid(visual)
    assert grid.shape == (2, 16, 16)
    torch.testing.assert_close(grid[:, 0], visual[:, 0])  # step 0: only segment 0
    # step 5: token 5 of segment 0 and token 1 of segment 1
    torch.testing.assert_close(grid[:, 5], (visual[:, 5] + visual[:, 9]) / 2)

    # The correlation at lag l is the mean cosine similarity of visual step i and audio step i + l, head by head.
    with torch.no_grad():
        head.visual_norm.weight.fill_(1.0)
        correlations = head.correlations(visual, mel)
    assert correlations.shape == (2, 2, 7)
    with torch.no_grad():
        similarity_lag = []
        v = head.visual_proj(head.visual_norm(head._center(grid))).view(2, 16, 2, 8)
        a = head.audio_proj(head._center(head.audio_grid(mel, 3))).view(2, 16, 2, 8)
        v, a = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(a, dim=-1)
        for lag in (-3, 0, 2):
            pairs = [(v[:, i] * a[:, i + lag]).sum(-1) for i in range(16) if 0 <= i + lag < 16]
            similarity_lag.append(torch.stack(pairs).mean(0))
    for value, index in zip(similarity_lag, (0, 3, 5)):
        torch.testing.assert_close(correlations[..., index], value)
    assert head(visual, mel).shape == (2, 5)
    with pytest.raises(ValueError, match="visual_tokens"):
        head(torch.randn(2, 24, 12), mel)
    with pytest.raises(ValueError, match="visual_tokens"):
        head(torch.randn(2, 20, 16), mel)
    with pytest.raises(ValueError, match="mel"):
        head(visual, mel[:, :, :10])
    with pytest.raises(ValueError, match="num_classes"):
        SynchformerSyncHead(visual_dim=16, num_classes=1)
    # The contrastive loss is an InfoNCE over the 2 x 3 segments: log(6) at chance, finite, differentiable.
    loss = head.contrastive_loss(visual, mel)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0.5 < float(loss.detach()) < 10


def test_appearance_augmentation_changes_the_look_not_the_pair(tiny_pipeline_dir, clip_data_dir, tmp_path):
    """`--appearance_augmentation`: the same (clip, start, label) and audio as without it, other pixels, drawn
    again the same way for the same (seed, epoch, index); constant over time (a still window stays still, so no
    event is invented); never applied to validation windows; a probability outside [0, 1] is refused by name."""
    import numpy as np
    import train_sync_encoder as script

    base = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--output_dir", tmp_path,
            "--validation_data_dir", clip_data_dir, *TINY_ARGS]  # fmt: skip
    plain_args = script.parse_args([str(a) for a in base])
    augmented_args = script.parse_args([str(a) for a in [*base, "--appearance_augmentation", 1.0]])
    encoder = script.load_sync_encoder(plain_args)
    plain = script.build_window_dataset(plain_args, encoder)
    augmented = script.build_window_dataset(augmented_args, encoder)
    changed = 0
    for index in range(len(plain)):
        a, b = plain[index], augmented[index]
        assert torch.equal(a["audio"], b["audio"]) and int(a["label"]) == int(b["label"])
        assert b["frames"].shape == a["frames"].shape and b["frames"].dtype == torch.uint8
        assert torch.equal(b["frames"], augmented[index]["frames"])  # reproducible (exact resume)
        changed += int(not torch.equal(a["frames"], b["frames"]))
    assert changed == len(plain)

    still = plain[0]["frames"][:1].expand(6, -1, -1, -1)
    for seed in range(8):
        out = script.random_appearance(still, np.random.default_rng(seed))
        assert torch.equal(out, out[:1].expand_as(out))

    validation = script.build_window_dataset(augmented_args, encoder, str(clip_data_dir), validation=True)
    reference = script.build_window_dataset(plain_args, encoder, str(clip_data_dir), validation=True)
    assert validation.appearance_augmentation == 0.0
    assert torch.equal(validation[0]["frames"], reference[0]["frames"])
    with pytest.raises(ValueError, match="--appearance_augmentation"):
        script.parse_args([str(a) for a in [*base, "--appearance_augmentation", 1.5]])
