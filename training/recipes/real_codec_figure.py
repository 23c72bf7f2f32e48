"""Listen to and look at a codec's reconstructions of a few recordings, next to Griffin-Lim from the true mel.

    python training/recipes/real_codec_figure.py --model CODEC_DIR --audio A.wav [B.wav ...] --output_dir DIR

For every file: the reference, the codec (MelVAE + vocoder), the vocoder alone on the true mel and Griffin-Lim from
the true mel (no weights), computed exactly as `foley-toolkit eval-codec` does (mono, 44.1 kHz, cropped to whole
latent frames). Written to `--output_dir`: `<name>.<system>.wav` (float, as produced, clipped to [-1, 1] only by the
file format), `<name>.png`: the four log-mels stacked top to bottom in that order (time left to right, low
frequencies at the bottom of each panel, one colour scale from the log-mel floor -11.5 to the loudest bin of the
reference), and `levels.json`: BS.1770 loudness, peak dBFS and DC offset of every version (before any clipping).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

SYSTEMS = ("reference", "codec", "vocoder_only", "griffin_lim")
# Anchor colours of a dark-to-bright perceptual scale (black, purple, red, orange, yellow-white).
_ANCHORS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Folder with vae/ and vocoder/ (diffusers layout).")
    parser.add_argument("--audio", nargs="+", required=True, help="Recordings to reconstruct.")
    parser.add_argument("--output_dir", required=True, help="Where the wavs, PNGs and levels.json go.")
    parser.add_argument("--griffin_lim_iters", type=int, default=32, help="As `eval-codec --griffin-lim-iters`.")
    parser.add_argument("--panel_height", type=int, default=192, help="Pixels per spectrogram (128 mel bins scaled).")
    return parser.parse_args(argv)


def colorize(values: np.ndarray) -> np.ndarray:
    """`(H, W)` values in [0, 1] -> `(H, W, 3)` uint8 through the anchor colours."""
    position = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    weight = (position - low)[..., None]
    return np.round(_ANCHORS[low] * (1 - weight) + _ANCHORS[low + 1] * weight).astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> None:
    """`(H, W, 3)` uint8 -> PNG, encoded by PyAV's (FFmpeg's) png encoder."""
    import av

    height, width = rgb.shape[:2]
    context = av.CodecContext.create("png", "w")
    context.width, context.height, context.pix_fmt = width, height, "rgb24"
    packets = context.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
    packets += context.encode(None)
    with open(path, "wb") as handle:
        handle.write(b"".join(bytes(packet) for packet in packets))


def spectrogram_panels(mels: list[torch.Tensor], panel_height: int) -> np.ndarray:
    """Log-mels `(128, frames)` -> one RGB image, panels stacked with a 4-pixel white separator; the colour scale
    runs from the log-mel floor to the first (reference) panel's maximum."""
    low, high = float(np.log(1e-5)), float(mels[0].max())
    rows = []
    for index, mel in enumerate(mels):
        # Rows reversed: low frequencies at the bottom.
        scaled = ((mel.numpy()[::-1] - low) / max(high - low, 1e-6)).astype(np.float64)
        repeat = max(1, panel_height // scaled.shape[0])
        width_repeat = max(1, 4 * 128 // max(scaled.shape[1], 1))  # short clips are stretched to >= ~512 pixels
        rows.append(colorize(np.repeat(np.repeat(scaled, repeat, axis=0), width_repeat, axis=1)))
        if index < len(mels) - 1:
            rows.append(np.full((4, rows[-1].shape[1], 3), 255, dtype=np.uint8))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> None:
    args = parse_args(argv)
    from foley_toolkit.audio_utils import SAMPLE_RATE, SAMPLES_PER_LATENT_FRAME, load_audio, save_audio
    from foley_toolkit.commands.eval_codec import load_codec, reconstruct
    from foley_toolkit.evaluation.codec_metrics import griffin_lim_from_log_mel
    from foley_toolkit.evaluation.level_metrics import audio_level
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram

    vae, vocoder = load_codec(args.model)
    mel_transform = LogMelSpectrogram()
    os.makedirs(args.output_dir, exist_ok=True)
    levels = {}
    for path in args.audio:
        waveform = load_audio(path, sample_rate=SAMPLE_RATE, mono=True)[0].clamp(-1.0, 1.0)
        num_samples = (waveform.shape[-1] // SAMPLES_PER_LATENT_FRAME) * SAMPLES_PER_LATENT_FRAME
        if num_samples < 2 * SAMPLES_PER_LATENT_FRAME:
            raise ValueError(f"`--audio` {path!r} is shorter than {2 * SAMPLES_PER_LATENT_FRAME} samples at 44.1 kHz.")
        waveform = waveform[:num_samples]
        with torch.inference_mode():
            true_mel = mel_transform(waveform)
        versions = {
            "reference": waveform,
            "codec": reconstruct(waveform, vae, vocoder),
            "vocoder_only": reconstruct(waveform, None, vocoder, mel_transform=mel_transform),
            "griffin_lim": torch.from_numpy(
                griffin_lim_from_log_mel(true_mel, num_samples, SAMPLE_RATE, n_iter=args.griffin_lim_iters)
            ),
        }
        name = os.path.splitext(os.path.basename(path))[0]
        levels[name] = {}
        mels = []
        for system in SYSTEMS:
            audio = versions[system].float()
            save_audio(os.path.join(args.output_dir, f"{name}.{system}.wav"), audio, SAMPLE_RATE, subtype="FLOAT")
            levels[name][system] = audio_level(audio.numpy(), SAMPLE_RATE)
            with torch.inference_mode():
                mels.append(mel_transform(audio))
        write_png(os.path.join(args.output_dir, f"{name}.png"), spectrogram_panels(mels, args.panel_height))
    with open(os.path.join(args.output_dir, "levels.json"), "w", encoding="utf-8") as handle:
        json.dump({"panels_top_to_bottom": list(SYSTEMS), "levels": levels}, handle, indent=2)
    print(json.dumps(levels, indent=2))


if __name__ == "__main__":
    main()
