"""Damaged and mislabelled media are refused or reported, never decoded into silently wrong lengths: a still image
renamed ``.mp4``, and an mp4 cut to half its bytes whose index (at the front of the file) still claims the full length.
"""

import json
import os
import warnings

import av
import numpy as np
import pytest
from PIL import Image

from foley_toolkit.audio_utils import SAMPLE_RATE, load_audio
from foley_toolkit.data import FoleyClipDataset, probe_duration
from foley_toolkit.synthetic import generate_clip, write_clip
from foley_toolkit.utils.video_io import TRUNCATION_TOLERANCE_SECONDS, TruncatedMediaWarning, load_video

CLIP_SECONDS = 1.6  # 40 frames at 25 fps (`generate_clip` rounds durations to whole frames)


def _faststart_copy(source, target) -> None:
    """Remuxes `source` (packets copied) with its index (moov) before the data, as web-ready mp4s are written: cut
    short, such a file still opens and its index claims the full duration."""
    with av.open(str(source)) as inp, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # demuxer flush packet
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """An intact synthetic clip (H.264 + AAC, index first), the same file cut to half its bytes, and a PNG named .mp4."""
    folder = tmp_path_factory.mktemp("bad_media")
    clip = generate_clip(seed=3, duration=CLIP_SECONDS, fps=25, width=64, height=64)
    write_clip(clip, folder / "written.mp4")
    intact = folder / "intact.mp4"
    _faststart_copy(folder / "written.mp4", intact)
    data = intact.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index is in the first half: the cut file still opens
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])

    image = folder / "picture.mp4"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "picture.png")
    os.replace(folder / "picture.png", image)
    return {"folder": folder, "intact": intact, "truncated": truncated, "image": image}


def test_png_renamed_mp4_is_refused_naming_the_file(media):
    image = media["image"]
    with pytest.raises(ValueError, match=r"picture\.mp4' is an image \(png_pipe\), not a video: it has no video stream"):
        load_video(image)
    with pytest.raises(ValueError, match=r"`video` <\d+ bytes> is an image"):
        load_video(image.read_bytes())
    with pytest.raises(ValueError, match=r"picture\.mp4' is an image .* no audio stream"):
        load_audio(image)
    with pytest.raises(ValueError, match=r"picture\.mp4' is an image .* no video stream"):
        probe_duration(str(image), is_video=True)


def test_truncated_mp4_warns_with_the_shortfall_or_raises(media):
    # the intact file decodes to its full length, with no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedMediaWarning)
        video = load_video(media["intact"])
        audio = load_audio(media["intact"], mono=False)
    assert video.duration == pytest.approx(CLIP_SECONDS)
    assert audio.shape == (2, round(CLIP_SECONDS * SAMPLE_RATE))
    assert 20 * np.log10(float(audio.abs().max())) > -30  # the clip's events, not silence

    truncated = media["truncated"]
    with pytest.warns(TruncatedMediaWarning, match=r"truncated\.mp4' is truncated or damaged: its video decodes to"):
        video = load_video(truncated)
    assert video.duration < CLIP_SECONDS - TRUNCATION_TOLERANCE_SECONDS  # what the warning is about
    with pytest.warns(TruncatedMediaWarning, match=r"truncated\.mp4' is truncated or damaged: its audio decodes to"):
        audio = load_audio(truncated)
    assert 0 < audio.shape[-1] < (CLIP_SECONDS - TRUNCATION_TOLERANCE_SECONDS) * SAMPLE_RATE
    with pytest.warns(TruncatedMediaWarning, match="audio decodes to"):  # encoded bytes take the same path
        load_audio(truncated.read_bytes())

    with pytest.raises(ValueError, match=rf"truncated\.mp4' .* container claims {CLIP_SECONDS:.3f} s"):
        load_video(truncated, on_truncated="raise")
    with pytest.raises(ValueError, match=r"truncated\.mp4' is truncated"):
        load_audio(truncated, on_truncated="raise")
    with pytest.raises(ValueError, match="`on_truncated`"):
        load_video(truncated, on_truncated="skip")

    # a cut that ends inside the intact part is complete: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedMediaWarning)
        assert load_video(truncated, max_duration=0.2).duration == pytest.approx(0.2)


def test_training_data_refuses_a_truncated_clip_instead_of_zero_padding_it(media):
    folder = media["folder"]
    rows = [{"file_name": "truncated.mp4", "caption": "cut short"}, {"file_name": "intact.mp4", "caption": "whole"}]
    with open(folder / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = FoleyClipDataset.from_folder(folder, segment_seconds=None, load_video=False)
    # the plan believes the index: both clips are planned at full length
    assert dataset.durations == pytest.approx([CLIP_SECONDS, CLIP_SECONDS])
    with pytest.raises(ValueError, match=r"truncated\.mp4' is truncated"):
        dataset[0]
    assert dataset[1]["audio"].shape == (1, round(CLIP_SECONDS * SAMPLE_RATE))
    with pytest.raises(ValueError, match=r"truncated\.mp4' is truncated"):
        FoleyClipDataset.from_folder(folder, segment_seconds=None, load_video=True)._item_video(dataset.items[0])


def test_media_helpers_still_import_from_audio_utils():
    from foley_toolkit import audio_utils
    from foley_toolkit.utils import video_io

    assert audio_utils.TruncatedMediaWarning is video_io.TruncatedMediaWarning
    assert audio_utils.open_media is video_io.open_media
    with pytest.raises(AttributeError, match="no_such_name"):
        audio_utils.no_such_name
