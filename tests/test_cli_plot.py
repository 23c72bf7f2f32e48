"""`foley-toolkit generate --plot` and the spectrogram picture of `foley_toolkit.plotting` that the app shares."""

import numpy as np
import pytest

from foley_toolkit.cli import main
from foley_toolkit.plotting import _MEL_TRANSFORMS, _band_centres_hz, log_mel_db, save_spectrogram

from utils import assert_cli_error


pytest.importorskip("matplotlib")
SAMPLE_RATE = 44100


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # a truncated or non-PNG file raises here
    with Image.open(path) as image:
        return image.format, image.size


def test_log_mel_db_of_a_tone():
    # A 1 kHz tone: its loudest band is the one centred nearest 1 kHz, and halving the amplitude lowers it 6.02 dB.
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
    spectra = log_mel_db(tone, SAMPLE_RATE)
    assert spectra.shape == (2, 128, (SAMPLE_RATE - 512) // 512 + 1)
    centres = _band_centres_hz(_MEL_TRANSFORMS[SAMPLE_RATE].mel_basis.numpy(), SAMPLE_RATE)
    middle = spectra[:, :, 10:-10].mean(axis=2)
    loudest = middle.argmax(axis=1)
    assert loudest[0] == loudest[1] == np.argmin(np.abs(centres - 1000))
    assert middle[0, loudest[0]] - middle[1, loudest[1]] == pytest.approx(20 * np.log10(2), abs=0.01)
    # Silence sits at the front end's floor, 20 log10(1e-5) = -100 dB.
    assert log_mel_db(np.zeros(4000), SAMPLE_RATE).max() == pytest.approx(-100.0, abs=1e-3)


def test_save_spectrogram_size_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, 22050))).astype(np.float32)
    path = save_spectrogram(audio, tmp_path / "noise.png", SAMPLE_RATE, width=640, height=360)
    assert _png_size(path) == ("PNG", (640, 360))
    with pytest.raises(ValueError, match="must end with .png"):
        save_spectrogram(audio, tmp_path / "noise.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_spectrogram(audio, tmp_path / "missing" / "noise.png")


def test_generate_plot(pipe_dir, tmp_path, capsys):
    out, plot = tmp_path / "rain.wav", tmp_path / "rain.png"
    code = main(["generate", "--model", str(pipe_dir), "--prompt", "rain", "--duration", "0.6", "--steps", "1",
                 "--guidance", "1.0", "--out", str(out), "--plot", str(plot)])  # fmt: skip
    assert code == 0 and out.is_file()
    assert f"wrote {plot}" in capsys.readouterr().out
    assert _png_size(plot) == ("PNG", (1000, 600))
    # Not a blank canvas: the picture has many distinct colours (the spectrogram's colour map).
    from PIL import Image

    with Image.open(plot) as image:
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_generate_plot_bad_paths(pipe_dir, tmp_path, capsys):
    common = ["generate", "--model", pipe_dir, "--prompt", "rain", "--duration", "0.5", "--out", tmp_path / "a.wav"]
    assert_cli_error(common + ["--plot", tmp_path / "a.jpg"], r"--plot must end with \.png", capsys)
    assert_cli_error(common + ["--plot", tmp_path / "nope" / "a.png"], r"--plot .*folder .* does not exist", capsys)
    # Rejected before generating: nothing was written.
    assert not (tmp_path / "a.wav").exists()
