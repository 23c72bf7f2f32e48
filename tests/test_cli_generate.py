"""`foley-toolkit generate` end to end with a tiny saved pipeline: wav/flac and mp4 outputs, text-to-audio, errors."""

import av
import numpy as np
import pytest
import soundfile as sf

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.cli import main

from utils import get_dummy_components, make_test_video


SAMPLE_RATE = 44100



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_pipeline")
    KlingFoleyPipeline(**get_dummy_components()).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # 30 frames at 25 fps = 1.2 s, with an original audio track that the output must replace.
    return make_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", duration=1.2, fps=25, audio=True)


def test_generate_wav_for_a_video(model_dir, video, tmp_path, capsys):
    out = tmp_path / "foley.wav"
    code = main(["generate", "--model", model_dir, "--video", video, "--prompt", "footsteps", "--steps", "2",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 2, round(1.2 * SAMPLE_RATE))
    assert "wrote" in capsys.readouterr().out

    # The seed sets the noise.
    other = tmp_path / "other.flac"
    assert main(["generate", "--model", model_dir, "--video", video, "--prompt", "footsteps", "--steps", "2",
                 "--seed", "1", "--out", str(other)]) == 0  # fmt: skip
    first, second = (sf.read(path, dtype="float32")[0] for path in (out, other))
    assert first.shape == second.shape and np.abs(first - second).max() > 1e-3


def test_generate_text_to_audio(model_dir, tmp_path):
    out = tmp_path / "rain.wav"
    code = main(["generate", "--model", model_dir, "--prompt", "rain", "--duration", "0.7", "--steps", "1",
                 "--guidance", "1.0", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert sf.info(out).frames == round(0.7 * SAMPLE_RATE)


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "foley-toolkit"]
    assert script.value == "foley_toolkit.cli:main"


def test_generate_mp4_with_the_audio_muxed_in(model_dir, video, tmp_path):
    out = tmp_path / "clip_foley.mp4"
    code = main(["generate", "--model", model_dir, "--video", video, "--prompt", "footsteps", "--negative-prompt",
                 "music", "--steps", "2", "--duration", "1.0", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0

    with av.open(str(video)) as source, av.open(str(out)) as container:
        source_frames = source.streams.video[0].frames
        assert [s.type for s in container.streams] == ["video", "audio"]
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert video_stream.frames == source_frames  # the pictures are copied, not re-timed
        assert audio_stream.rate == SAMPLE_RATE and audio_stream.channels == 2
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio_stream)], axis=-1)
    # The generated 1.0 s, padded with silence to the 1.2 s video (AAC adds a few priming samples at most).
    assert abs(decoded.shape[-1] - round(1.2 * SAMPLE_RATE)) <= 2048
    assert np.abs(decoded[:, : SAMPLE_RATE // 2]).max() > 1e-3


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--prompt", "rain", "--out", "x.wav"], "--duration is required"),
        (["--out", "x.wav"], "pass --video, --prompt, or both"),
        (["--video", "/no/such.mp4", "--out", "x.wav"], "--video '/no/such.mp4': no such file"),
        (["--prompt", "rain", "--duration", "1", "--out", "x.mp3"], "--out must end with"),
        (["--prompt", "rain", "--duration", "1", "--out", "x.mp4"], "needs --video"),
        (["--prompt", "rain", "--duration", "1", "--steps", "0", "--out", "x.wav"], "--steps must be >= 1"),
    ],
)
def test_generate_argument_errors(model_dir, arguments, message, capsys):
    assert main(["generate", "--model", model_dir, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_generate_input_errors_from_the_pipeline(model_dir, video, tmp_path, capsys):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    assert main(["generate", "--model", model_dir, "--video", str(not_a_video), "--out", str(tmp_path / "x.wav")]) == 2
    assert "`video`" in capsys.readouterr().err
    bad_interval = ["--prompt", "rain", "--duration", "1", "--guidance-interval", "0.8", "0.2", "--out",
                    str(tmp_path / "x.wav")]  # fmt: skip
    assert main(["generate", "--model", model_dir, *bad_interval]) == 2
    assert "`guidance_interval`" in capsys.readouterr().err
    too_long = ["--video", video, "--duration", "5", "--out", str(tmp_path / "x.wav")]
    assert main(["generate", "--model", model_dir, *too_long]) == 2
    assert "`duration`" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_generate_writes_out_atomically(model_dir, video, tmp_path, monkeypatch):
    """--out appears only when complete: a writer that fails half-way leaves neither a partial --out nor a temporary
    file, and a successful run leaves exactly --out (with a normal file mode)."""
    import os

    from foley_toolkit.pipelines.kling_foley.long_form import StreamingAudioWriter

    out_dir = tmp_path / "out"
    arguments = ["generate", "--model", model_dir, "--video", video, "--steps", "1", "--out"]

    def crash_half_way(writer, block):  # the audio is streamed to the file: fail on its first block
        assert os.path.isfile(writer.path)  # the temporary file exists...
        assert not (out_dir / "clip.wav").exists()  # ...and the final name is not written to directly
        raise OSError("No space left on device")

    monkeypatch.setattr(StreamingAudioWriter, "write", crash_half_way)
    with pytest.raises(OSError, match="No space left"):
        main([*arguments, str(out_dir / "clip.wav")])
    assert sorted(os.listdir(out_dir)) == []
    monkeypatch.undo()

    assert main([*arguments, str(out_dir / "clip.wav")]) == 0
    assert sorted(os.listdir(out_dir)) == ["clip.wav"]
    assert sf.info(str(out_dir / "clip.wav")).frames == round(1.2 * SAMPLE_RATE)
    umask = os.umask(0)
    os.umask(umask)
    assert (out_dir / "clip.wav").stat().st_mode & 0o777 == 0o666 & ~umask


def _one_error_line(stderr: str) -> str:
    """The single error line of `stderr` (loading progress bars, which redraw with carriage returns, aside)."""
    lines = [line.split("\r")[-1] for line in stderr.splitlines()]
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_generate_unloadable_model_is_one_line_and_exit_code_two(model_dir, video, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "x.wav")
    assert main(["generate", "--model", str(tmp_path / "no_such_model"), "--video", video, "--out", out]) == 2
    error = capsys.readouterr().err
    assert _one_error_line(error).startswith("foley-toolkit generate: error: cannot load --model")

    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated)
    weights = truncated / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["generate", "--model", str(truncated), "--video", video, "--out", out]) == 2
    error = capsys.readouterr().err
    assert _one_error_line(error).startswith("foley-toolkit generate: error: cannot load --model")
    assert not (tmp_path / "x.wav").exists()
