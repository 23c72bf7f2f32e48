"""`foley-toolkit eval-codec`: reconstruct a folder of recordings through MelVAE + vocoder (or the vocoder alone)
and report the codec metrics of the Kling-Foley paper's Table 3, plus the level of every reconstruction (BS.1770
loudness, peak dBFS, DC offset) and its loudness error against the original.

    foley-toolkit eval-codec --model DIR --audio-dir DIR [--vocoder-only] [--griffin-lim] [--max-files N] [--json OUT]

`--griffin-lim` adds a row resynthesised from the true mel with no weights (NNLS mel inversion + Griffin-Lim, needs
librosa): the floor every trained vocoder must beat.

`--model` is a diffusers-layout folder with `vae/` (MelVAE) and `vocoder/` (MMAudioVocoder or VocosVocoder)
subfolders, e.g. a saved KlingFoleyPipeline. Every file is decoded, averaged to mono, resampled to 44.1 kHz and
cropped to a whole number of latent frames (1024 samples) so both paths return exactly as many samples as they were
given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-codec",
        help="measure codec reconstruction quality (PESQ, SI-SDR, SDR, LSD, MCD, mel and STFT loss).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="Folder with `vae/` and `vocoder/` subfolders (diffusers layout)."
    )
    parser.add_argument("--audio-dir", required=True, help="Folder of recordings (searched recursively).")
    parser.add_argument("--vocoder-only", action="store_true", help="Skip the MelVAE: mel -> vocoder -> waveform.")
    parser.add_argument(
        "--max-files",
        type=int,
        default=None,
        help="Evaluate at most this many files (sorted by path; too-short files do not count).",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="Crop every file to at most this many seconds."
    )
    parser.add_argument(
        "--json", dest="json_out", default=None, help="Write per-file and mean metrics to this JSON file."
    )
    parser.add_argument("--metrics", nargs="+", default=None, help="Subset of metrics (default: all).")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--per-file", action="store_true", help="Also print one table row per file.")
    parser.add_argument(
        "--griffin-lim",
        action="store_true",
        help="Add a row resynthesised from the true mel by Griffin-Lim (no weights; needs librosa).",
    )
    parser.add_argument("--griffin-lim-iters", type=int, default=32, help="Griffin-Lim iterations (default 32).")
    parser.set_defaults(func=run)


def find_audio_files(audio_dir: str, max_files: int | None = None) -> list[str]:
    """Audio files under `audio_dir` (recursive), sorted by path."""
    if not os.path.isdir(audio_dir):
        raise FileNotFoundError(f"`--audio-dir` {audio_dir!r} is not a directory.")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(audio_dir)
        for name in names
        if name.lower().endswith(AUDIO_EXTENSIONS)
    )
    if not files:
        raise FileNotFoundError(f"`--audio-dir` {audio_dir!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}).")
    return files[:max_files] if max_files is not None else files


def load_codec(model_dir: str, vocoder_only: bool = False, device: str | torch.device = "cpu"):
    """`(vae or None, vocoder)` from a diffusers-layout folder, in eval mode on `device`."""
    from ..models.autoencoders.autoencoder_mel_vae import MelVAE
    from ..models.vocoder import load_vocoder, vocoder_hop_length

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"`--model` {model_dir!r} is not a directory.")
    needed = ["vocoder"] if vocoder_only else ["vae", "vocoder"]
    for subfolder in needed:
        if not os.path.isfile(os.path.join(model_dir, subfolder, "config.json")):
            raise FileNotFoundError(f"`--model` {model_dir!r} has no `{subfolder}/config.json`.")
    # Either vocoder class (BigVGAN `MMAudioVocoder` or `VocosVocoder`), chosen by its config.json.
    vocoder = load_vocoder(model_dir, subfolder="vocoder").to(device).eval()
    vae = None
    if not vocoder_only:
        vae = MelVAE.from_pretrained(model_dir, subfolder="vae").to(device).eval()
        vae.enable_tiling()  # long recordings decode in chunks; exact thanks to the receptive-radius overlap
    hop_length = vae.config.hop_length if vae is not None else 512
    if vocoder_hop_length(vocoder) != hop_length:
        raise ValueError(
            f"`--model` {model_dir!r}: the vocoder makes {vocoder_hop_length(vocoder)} samples per mel frame, the "
            f"mel hop length is {hop_length}."
        )
    return vae, vocoder


@torch.inference_mode()
def reconstruct(waveform: torch.Tensor, vae, vocoder, mel_transform=None) -> torch.Tensor:
    r"""
    waveform `(num_samples,)` at 44.1 kHz -> log-mel -> [MelVAE encode (posterior mean) -> decode] -> vocoder.

    Returns:
        `(num_samples,)` float32 on CPU (`num_samples` must be a multiple of 1024 for an exact-length output).
    """
    from ..models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram
    from ..models.vocoder import vocode

    device = next(vocoder.parameters()).device
    if mel_transform is None:
        mel_transform = vae.log_mel if vae is not None else LogMelSpectrogram().to(device)
    mel = mel_transform(waveform.to(device)[None])  # (1, 128, frames)
    if vae is not None:
        latents = vae.encode(mel).latent_dist.mode()
        mel = vae.decode(latents).sample
    return vocode(vocoder, mel, num_samples=waveform.shape[-1])[0, 0].cpu()


def evaluate_folder(
    model_dir: str,
    audio_dir: str,
    vocoder_only: bool = False,
    max_files: int | None = None,
    max_seconds: float | None = None,
    metrics: list[str] | None = None,
    device: str | None = None,
    griffin_lim: bool = False,
    griffin_lim_iters: int = 32,
) -> dict:
    """Run the evaluation; returns the JSON-able result (`mean`, `files`, settings, and with `griffin_lim` a
    `griffin_lim` entry with its own `mean` and `files`). Every row has the codec metrics and the level metrics of
    the reconstruction (`codec_level_metrics`)."""
    from ..audio_utils import SAMPLE_RATE, SAMPLES_PER_LATENT_FRAME, load_audio
    from ..evaluation.codec_metrics import (
        codec_level_metrics,
        compute_codec_metrics,
        griffin_lim_from_log_mel,
        summarize_codec_metrics,
    )
    from ..models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = find_audio_files(audio_dir)
    vae, vocoder = load_codec(model_dir, vocoder_only=vocoder_only, device=device)
    rows, griffin_lim_rows, skipped = [], [], []
    mel_transform = LogMelSpectrogram()
    start = time.perf_counter()
    for path in files:
        if max_files is not None and len(rows) >= max_files:
            break
        waveform = load_audio(path, sample_rate=SAMPLE_RATE, mono=True)[0].clamp(-1.0, 1.0)
        if max_seconds is not None:
            waveform = waveform[: int(max_seconds * SAMPLE_RATE)]
        # Whole latent frames: both paths then return exactly the input's length.
        num_samples = (waveform.shape[-1] // SAMPLES_PER_LATENT_FRAME) * SAMPLES_PER_LATENT_FRAME
        if num_samples < 2 * SAMPLES_PER_LATENT_FRAME:
            skipped.append(os.path.relpath(path, audio_dir))
            continue
        waveform = waveform[:num_samples]
        reconstruction = reconstruct(waveform, vae, vocoder)
        row = {"file": os.path.relpath(path, audio_dir), "seconds": num_samples / SAMPLE_RATE}
        row.update(compute_codec_metrics(waveform, reconstruction, SAMPLE_RATE, metrics))
        row.update(codec_level_metrics(waveform, reconstruction, SAMPLE_RATE))
        rows.append(row)
        if griffin_lim:
            with torch.inference_mode():
                true_mel = mel_transform(waveform)  # (128, frames), the mel the vocoder is trained to invert
            resynthesis = griffin_lim_from_log_mel(true_mel, num_samples, SAMPLE_RATE, n_iter=griffin_lim_iters)
            gl_row = {"file": row["file"], "seconds": row["seconds"]}
            gl_row.update(compute_codec_metrics(waveform, resynthesis, SAMPLE_RATE, metrics))
            gl_row.update(codec_level_metrics(waveform, resynthesis, SAMPLE_RATE))
            griffin_lim_rows.append(gl_row)
    if not rows:
        raise ValueError(f"No file in `--audio-dir` {audio_dir!r} is long enough (>= 2048 samples at 44.1 kHz).")
    return {
        "model": os.path.abspath(model_dir),
        "audio_dir": os.path.abspath(audio_dir),
        "mode": "vocoder-only" if vocoder_only else "vae+vocoder",
        "sample_rate": SAMPLE_RATE,
        "device": str(device),
        "num_files": len(rows),
        "skipped_files": skipped,
        "seconds_total": sum(row["seconds"] for row in rows),
        "wall_seconds": time.perf_counter() - start,
        "mean": summarize_codec_metrics(rows),
        "files": rows,
        "griffin_lim": (
            {"n_iter": griffin_lim_iters, "mean": summarize_codec_metrics(griffin_lim_rows), "files": griffin_lim_rows}
            if griffin_lim
            else None
        ),
    }


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def run(args: argparse.Namespace) -> int:
    from ..evaluation.codec_metrics import format_codec_metrics_table

    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"`--max-files` must be >= 1, got {args.max_files}.")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise ValueError(f"`--max-seconds` must be > 0, got {args.max_seconds}.")
    if args.griffin_lim_iters < 1:
        raise ValueError(f"`--griffin-lim-iters` must be >= 1, got {args.griffin_lim_iters}.")
    result = evaluate_folder(
        args.model,
        args.audio_dir,
        vocoder_only=args.vocoder_only,
        max_files=args.max_files,
        max_seconds=args.max_seconds,
        metrics=args.metrics,
        device=args.device,
        griffin_lim=args.griffin_lim,
        griffin_lim_iters=args.griffin_lim_iters,
    )
    system = "vocoder only" if args.vocoder_only else "MelVAE + vocoder"
    table_rows = {system: result["mean"]}
    counts = {system: result["num_files"]}
    if result["griffin_lim"] is not None:
        table_rows["Griffin-Lim (true mel, no weights)"] = result["griffin_lim"]["mean"]
        counts["Griffin-Lim (true mel, no weights)"] = result["num_files"]
    if args.per_file:
        table_rows.update({row["file"]: row for row in result["files"]})
    print(format_codec_metrics_table(table_rows, counts))
    if result["skipped_files"]:
        print(f"skipped (shorter than 2048 samples): {', '.join(result['skipped_files'])}", file=sys.stderr)
    summary = {key: result[key] for key in ("mode", "num_files", "seconds_total", "wall_seconds", "mean")}
    if result["griffin_lim"] is not None:
        summary["griffin_lim_mean"] = result["griffin_lim"]["mean"]
    print(json.dumps(_json_safe(summary), indent=2))
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(_json_safe(result), handle, indent=2)
    return 0
