"""The vocoder configs and `foley-toolkit eval-codec` on generated recordings with a tiny saved model."""

import json
import math

import numpy as np
import pytest
import torch

from foley_toolkit import MelVAE, MMAudioVocoder, build_vocoder, save_audio, tiny_vocoder_config, vocode
from foley_toolkit.cli import main
from foley_toolkit.commands.eval_codec import reconstruct
from foley_toolkit.evaluation import CODEC_METRICS, compute_codec_metrics
from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config, validate_vocoder_config
from utils import assert_cli_error


def test_bigvgan_v2_44khz_512x_config():
    config = bigvgan_v2_44khz_128band_512x_config()
    # NVIDIA's configs/bigvgan_v2_44khz_128band_512x.json
    assert config["upsample_rates"] == [8, 4, 2, 2, 2, 2] and config["upsample_kernel_sizes"] == [16, 8, 4, 4, 4, 4]
    assert config["upsample_initial_channel"] == 1536 and config["num_mels"] == 128
    assert config["resblock_kernel_sizes"] == [3, 7, 11] and config["resblock_dilation_sizes"] == [[1, 3, 5]] * 3
    with torch.device("meta"):
        vocoder = build_vocoder(config)
    assert 122e6 < sum(p.numel() for p in vocoder.parameters()) < 122.5e6  # BigVGAN-v2 44 kHz: 122M
    assert math.prod(tiny_vocoder_config()["upsample_rates"]) == 512
    with pytest.raises(ValueError, match="multiply to 256"):
        validate_vocoder_config(
            {**config, "upsample_rates": [4, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4]}
        )
    with pytest.raises(ValueError, match="num_mels"):
        validate_vocoder_config({**config, "num_mels": 100})


def test_tiny_vocoder_and_stereo_vocode():
    vocoder = build_vocoder(tiny_vocoder_config()).eval()
    mel = torch.randn(2, 128, 10) - 5
    with torch.no_grad():
        waveform = vocoder(mel).sample
    assert waveform.shape == (2, 1, 5120) and waveform.abs().max() <= 1.0
    stereo = vocode(vocoder, torch.stack([mel, mel.flip(0)], dim=1), num_samples=5000)
    assert stereo.shape == (2, 2, 5000)
    # One vocoder call per channel: channel 1 of sample 0 is sample 1's mel.
    assert torch.allclose(stereo[0, 1], waveform[1, 0, :5000], atol=1e-5)
    assert vocode(vocoder, mel, num_samples=6000).shape == (2, 1, 6000)


def write_recordings(folder):
    """Three 'recordings' at different rates / formats / channel counts, one too short to evaluate."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.2 * 48000)) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)
    save_audio(folder / "tone_48k_stereo.wav", np.stack([tone, 0.5 * tone]), 48000)
    t = np.arange(int(0.8 * 44100)) / 44100
    save_audio(folder / "noise.flac", 0.1 * rng.standard_normal(t.shape) * (t < 0.5), 44100)
    save_audio(folder / "nested" / "chirp.ogg", 0.2 * np.sin(2 * np.pi * (200 + 2000 * t) * t), 44100)
    save_audio(folder / "click.wav", 0.5 * rng.standard_normal(1000), 44100)
    (folder / "notes.txt").write_text("not audio")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    MelVAE(latent_channels=8, block_out_channels=(16, 32), layers_per_block=1, kernel_size=3).save_pretrained(
        folder / "vae"
    )
    build_vocoder(tiny_vocoder_config()).save_pretrained(folder / "vocoder")
    return folder


def test_eval_codec_cli(tmp_path, tiny_model_dir, capsys):
    audio_dir = tmp_path / "audio"
    write_recordings(audio_dir)
    out_json = tmp_path / "report" / "codec.json"
    assert (
        main(["eval-codec", "--model", str(tiny_model_dir), "--audio-dir", str(audio_dir), "--json", str(out_json)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "MelVAE + vocoder" in printed and "si_sdr ↑" in printed and "mcd ↓" in printed
    report = json.loads(out_json.read_text())
    assert report["mode"] == "vae+vocoder" and report["num_files"] == 3
    assert report["skipped_files"] == ["click.wav"]
    assert [row["file"] for row in report["files"]] == ["nested/chirp.ogg", "noise.flac", "tone_48k_stereo.wav"]
    # Whole latent frames of 1024 samples: 1.2 s -> 51 frames.
    assert report["files"][2]["seconds"] == pytest.approx(51 * 1024 / 44100)
    for name in CODEC_METRICS:
        assert name in report["mean"]
    for name in ("si_sdr", "sdr", "lsd", "mcd", "mel_loss", "stft_loss"):
        assert all(math.isfinite(row[name]) for row in report["files"])
    # An untrained codec reconstructs badly: large spectral distances.
    assert report["mean"]["mel_loss"] > 1.0

    # The reported numbers are the metrics of the documented reconstruction path.
    vae = MelVAE.from_pretrained(tiny_model_dir, subfolder="vae").eval()
    vocoder = MMAudioVocoder.from_pretrained(tiny_model_dir, subfolder="vocoder").eval()
    from foley_toolkit import load_audio

    waveform = load_audio(audio_dir / "noise.flac")[0][: 34 * 1024]
    reconstruction = reconstruct(waveform, vae, vocoder)
    assert reconstruction.shape == waveform.shape
    expected = compute_codec_metrics(waveform, reconstruction, metrics=["lsd", "mel_loss"])
    assert report["files"][1]["lsd"] == pytest.approx(expected["lsd"], rel=1e-4)
    assert report["files"][1]["mel_loss"] == pytest.approx(expected["mel_loss"], rel=1e-4)


def test_eval_codec_vocoder_only_and_errors(tmp_path, tiny_model_dir, capsys):
    audio_dir = tmp_path / "audio"
    write_recordings(audio_dir)
    vocoder_dir = tmp_path / "vocoder_model"
    build_vocoder(tiny_vocoder_config()).save_pretrained(vocoder_dir / "vocoder")  # no vae/ needed
    code = main(
        [
            "eval-codec",
            "--model",
            str(vocoder_dir),
            "--audio-dir",
            str(audio_dir),
            "--vocoder-only",
            "--max-files",
            "2",
            "--metrics",
            "sdr",
            "lsd",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "vocoder only" in printed
    summary = json.loads(printed[printed.index("{") :])
    assert summary["mode"] == "vocoder-only" and summary["num_files"] == 2 and set(summary["mean"]) == {
        "sdr",
        "lsd",
        *("loudness_lufs", "peak_dbfs", "dc_offset", "loudness_error_db", "abs_loudness_error_db"),  # always measured
    }

    assert_cli_error(["eval-codec", "--model", vocoder_dir, "--audio-dir", audio_dir], "vae/config.json", capsys)
    assert_cli_error(["eval-codec", "--model", tiny_model_dir, "--audio-dir", tmp_path / "missing"], "--audio-dir",
                     capsys)  # fmt: skip
    assert_cli_error(["eval-codec", "--model", tiny_model_dir, "--audio-dir", vocoder_dir], "no audio files", capsys)


def test_eval_codec_levels_and_griffin_lim_row(tmp_path, tiny_model_dir, capsys):
    from foley_toolkit import load_audio
    from foley_toolkit.evaluation import LEVEL_METRICS, codec_level_metrics, mel_distance

    audio_dir = tmp_path / "audio"
    write_recordings(audio_dir)
    out_json = tmp_path / "codec.json"
    argv = ["eval-codec", "--model", str(tiny_model_dir), "--audio-dir", str(audio_dir), "--vocoder-only"]
    argv += ["--max-files", "1", "--metrics", "mel_loss", "lsd", "--griffin-lim", "--griffin-lim-iters", "8"]
    assert main(argv + ["--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "Griffin-Lim (true mel, no weights)" in printed and "ΔLUFS" in printed and "peak dBFS" in printed
    summary = json.loads(printed[printed.index("{") :])
    report = json.loads(out_json.read_text())
    gl = report["griffin_lim"]
    assert gl["n_iter"] == 8 and [row["file"] for row in gl["files"]] == [row["file"] for row in report["files"]]
    for row in report["files"] + gl["files"]:
        assert set(LEVEL_METRICS) <= set(row)
    for summary_row in (report["mean"], gl["mean"], summary["griffin_lim_mean"]):
        assert {"loudness_lufs", "peak_dbfs", "dc_offset", "loudness_error_db", "abs_loudness_error_db"} <= set(summary_row)
    # The floor: from the true mel, Griffin-Lim is close to the original (an untrained vocoder is not), and has
    # the original's loudness within 1.5 dB.
    assert gl["mean"]["mel_loss"] < 0.5 < report["mean"]["mel_loss"]
    assert gl["mean"]["abs_loudness_error_db"] < 1.5
    # The reported levels are those of the documented reconstruction.
    vocoder = MMAudioVocoder.from_pretrained(tiny_model_dir, subfolder="vocoder").eval()
    waveform = load_audio(audio_dir / "nested" / "chirp.ogg")[0][: 34 * 1024]
    expected = codec_level_metrics(waveform, reconstruct(waveform, None, vocoder))
    for name in LEVEL_METRICS:
        assert report["files"][0][name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6)
    assert mel_distance(waveform, np.zeros(waveform.shape[-1])) > gl["files"][0]["mel_loss"] * 2
    assert_cli_error(argv[:-2] + ["--griffin-lim-iters", "0"], "--griffin-lim-iters", capsys)


def test_load_codec_loads_a_vocos_vocoder(tmp_path):
    """`load_codec` picks the vocoder class from config.json: a Vocos folder loads as `VocosVocoder`."""
    from foley_toolkit.commands.eval_codec import load_codec
    from foley_toolkit.models.vocoder_vocos import VocosVocoder, tiny_vocos_config

    VocosVocoder(**tiny_vocos_config()).save_pretrained(tmp_path / "vocoder")
    vae, vocoder = load_codec(str(tmp_path), vocoder_only=True)
    assert vae is None and type(vocoder) is VocosVocoder and not vocoder.training
