"""Audio I/O, resampling and the one place that turns a duration into sequence lengths.

Kling-Foley works at 44.1 kHz. The numbers below are the fixed audio representation of DESIGN.md section 3: a
BigVGAN-v2 log-mel front end (n_fft 2048, hop 512, 128 bands) and a MelVAE that halves the mel frame rate.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from fractions import Fraction

import numpy as np
import torch

SAMPLE_RATE = 44_100
N_FFT = 2048
HOP_LENGTH = 512
NUM_MELS = 128
# The MelVAE downsamples the mel frames once by 2: one latent frame covers 1024 samples (43.07 Hz).
LATENT_DOWNSAMPLE = 2
SAMPLES_PER_LATENT_FRAME = HOP_LENGTH * LATENT_DOWNSAMPLE

CLIP_FRAME_RATE = 8
SYNC_FRAME_RATE = 25
SYNC_SEGMENT_FRAMES = 16
SYNC_SEGMENT_STRIDE = 8
SYNC_TOKENS_PER_SEGMENT = 8

# Frame counts are floor(duration * rate); a small tolerance keeps 4.6 s * 25 fps = 114.99999999999999 at 115.
_FRAME_EPS = 1e-6

# Decoded media may end this much earlier than its container claims without being called truncated: AAC priming and
# padding (1024-2048 samples, under 50 ms at 44.1 kHz) and edit lists move an intact file's end by a few tens of ms.
TRUNCATION_TOLERANCE_SECONDS = 0.1
TRUNCATION_ACTIONS = ("warn", "raise", "ignore")


class TruncatedMediaWarning(UserWarning):
    """Decoding a file gave less media than its container's index claims (a truncated or damaged file).

    Turn it into an error everywhere with ``warnings.filterwarnings("error", category=TruncatedMediaWarning)``, or
    per call with ``on_truncated="raise"``."""


def media_label(source) -> str:
    """How error messages name a media source: the path, or what kind of in-memory object it is."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def check_decoded_duration(
    decoded: float,
    claimed: float | None,
    label: str,
    what: str,
    on_truncated: str = "warn",
    tolerance: float = TRUNCATION_TOLERANCE_SECONDS,
) -> None:
    r"""
    Warns or raises when `decoded` seconds of media fall short of the `claimed` seconds of its container index by more
    than `tolerance` (a truncated file: its header promises the full length, its data stops early).

    Args:
        decoded (`float`): Seconds actually decoded.
        claimed (`float`, *optional*): Seconds the container says the stream lasts; None (unknown) checks nothing.
        label (`str`): The file, as named in the message.
        what (`str`): "audio" or "video".
        on_truncated (`str`, defaults to `"warn"`): ``"warn"`` (`TruncatedMediaWarning`), ``"raise"`` (`ValueError`)
            or ``"ignore"``.
        tolerance (`float`, defaults to `TRUNCATION_TOLERANCE_SECONDS`): Allowed shortfall in seconds.
    """
    if on_truncated not in TRUNCATION_ACTIONS:
        raise ValueError(f"`on_truncated` must be one of {TRUNCATION_ACTIONS}, got {on_truncated!r}.")
    if claimed is None or not math.isfinite(claimed) or on_truncated == "ignore":
        return
    if claimed - decoded <= tolerance:
        return
    message = (
        f"{label} is truncated or damaged: its {what} decodes to {decoded:.3f} s but the container claims "
        f"{claimed:.3f} s (more than {tolerance:.3g} s missing)."
    )
    if on_truncated == "raise":
        raise ValueError(message)
    warnings.warn(message, TruncatedMediaWarning, stacklevel=4)  # the caller of load_audio / load_video


def num_mel_frames(num_samples: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Mel frames the front end produces for `num_samples` samples (reflect pad `(n_fft - hop) / 2`, `center=False`):
    `(num_samples + (n_fft - hop) - n_fft) // hop + 1`, e.g. 689 for 352,800 samples."""
    return (num_samples + (n_fft - hop_length) - n_fft) // hop_length + 1


def sequence_lengths(duration: float, sample_rate: int = SAMPLE_RATE) -> dict[str, int]:
    r"""
    Every sequence length of a clip of `duration` seconds, computed in one place.

    Args:
        duration (`float`): Clip length in seconds (> 0).
        sample_rate (`int`, defaults to 44100): Waveform sample rate.

    Returns:
        `dict[str, int]` with
        - `num_samples`: `round(duration * sample_rate)` (352,800 for 8 s),
        - `mel_frames`: frames of the log-mel front end (689 for 8 s),
        - `latent_frames`: `ceil(mel_frames / 2)`, what `MelVAE.encode` returns for that waveform (345 for 8 s),
        - `audio_tokens`: `ceil(num_samples / 1024)`, the latent length whose decode covers every sample (the
          transformer's audio sequence length; equals `latent_frames` unless `num_samples % 1024` is in
          `(0, 512)`, e.g. 44 against 43 for 1 s),
        - `clip_frames`: CLIP frames at 8 fps, `int(duration * 8)`,
        - `sync_frames`: Synchformer frames at 25 fps, `int(duration * 25)`,
        - `sync_segments`: 16-frame segments with stride 8, `(sync_frames - 16) // 8 + 1` (0 if fewer than 16 frames),
        - `sync_tokens`: `sync_segments * 8`.
    """
    if not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"`duration` must be a positive number of seconds, got {duration!r}.")
    num_samples = int(round(duration * sample_rate))
    mel_frames = max(num_mel_frames(num_samples), 0)
    sync_frames = int(math.floor(duration * SYNC_FRAME_RATE + _FRAME_EPS))
    sync_segments = max((sync_frames - SYNC_SEGMENT_FRAMES) // SYNC_SEGMENT_STRIDE + 1, 0)
    return {
        "num_samples": num_samples,
        "mel_frames": mel_frames,
        "latent_frames": math.ceil(mel_frames / LATENT_DOWNSAMPLE),
        "audio_tokens": math.ceil(num_samples / SAMPLES_PER_LATENT_FRAME),
        "clip_frames": int(math.floor(duration * CLIP_FRAME_RATE + _FRAME_EPS)),
        "sync_frames": sync_frames,
        "sync_segments": sync_segments,
        "sync_tokens": sync_segments * SYNC_TOKENS_PER_SEGMENT,
    }


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, target_sr: int) -> np.ndarray | torch.Tensor:
    r"""
    Band-limited polyphase resampling along the last axis (`scipy.signal.resample_poly`, Kaiser window).

    Args:
        audio (`np.ndarray` or `torch.Tensor` of shape `(..., num_samples)`): Waveform.
        orig_sr (`int`): Its sample rate.
        target_sr (`int`): The wanted sample rate.

    Returns:
        The resampled waveform, same type (and for tensors, dtype and device) as `audio`, with
        `ceil(num_samples * target_sr / orig_sr)` samples.
    """
    if int(orig_sr) <= 0 or int(target_sr) <= 0:
        raise ValueError(f"Sample rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}.")
    if int(orig_sr) == int(target_sr):
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(int(target_sr), int(orig_sr))
    if isinstance(audio, torch.Tensor):
        array = audio.detach().to("cpu", torch.float64).numpy()
        out = resample_poly(array, ratio.numerator, ratio.denominator, axis=-1)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=audio.device, dtype=audio.dtype)
    out = resample_poly(np.asarray(audio, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.asarray(audio).dtype if np.asarray(audio).dtype.kind == "f" else np.float32)


def _read_with_soundfile(source) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(source, dtype="float32", always_2d=True)  # (num_samples, channels)
    return data.T, int(sr)


def is_image_container(container) -> bool:
    """Whether FFmpeg opened a still image (png, jpeg, webp, ... whatever its file name says) rather than a media
    container: its demuxer is an image pipe (``png_pipe``, ``jpeg_pipe``, ...) or the ``image2`` sequence reader."""
    names = container.format.name.split(",")
    return any(name.endswith("_pipe") or name in ("image2", "image2pipe") for name in names)


def open_media(source, label: str, kind: str):
    """`av.open(source)` for reading a `kind` (``"video"`` or ``"audio"``) stream, with the errors a user can act on:
    a ValueError naming `label` when FFmpeg cannot open it, when it is a still image (which FFmpeg would read as a
    1/25 s "video"), or when it has no `kind` stream. Returns the open container (close it, or use ``with``)."""
    import av

    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise ValueError(f"{label} could not be opened as {'a video' if kind == 'video' else 'audio'}: {error}") from error
    reason = None
    if is_image_container(container):
        what = "a video" if kind == "video" else "audio or video"
        reason = f"is an image ({container.format.name}), not {what}: it has no {kind} stream."
    elif not (container.streams.video if kind == "video" else container.streams.audio):
        reason = f"has no {kind} stream."
    if reason is not None:
        container.close()
        raise ValueError(f"{label} {reason}")
    return container


def claimed_stream_seconds(container, stream) -> float | None:
    """Seconds `stream` lasts according to the container index (per-stream duration, else the container's when it holds
    only this stream); None when the container does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        import av

        return container.duration / av.time_base
    return None


def _read_with_pyav(source, label: str, on_truncated: str = "warn") -> tuple[np.ndarray, int]:
    import av

    with open_media(source, label, "audio") as container:
        stream = container.streams.audio[0]
        # Planar float keeps (channels, samples) whatever the codec's native layout.
        resampler = av.AudioResampler(format="fltp")
        chunks, sr, corrupt_packets = [], stream.rate, 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()  # the final empty packet flushes the decoder
            except av.InvalidDataError:  # a damaged packet (e.g. cut off at the end of a truncated file): skip it
                corrupt_packets += 1
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    sr = out.sample_rate
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
        if not chunks:
            detail = f" ({corrupt_packets} corrupt packets)" if corrupt_packets else ""
            raise ValueError(f"{label} has an empty or undecodable audio stream{detail}.")
        audio = np.concatenate(chunks, axis=-1)
        claimed = claimed_stream_seconds(container, stream)
        check_decoded_duration(audio.shape[-1] / sr, claimed, label, "audio", on_truncated)
        # AAC pads its last frame: keep only the samples the stream says it holds.
        if claimed is not None:
            expected = int(round(claimed * sr))
            if 0 < expected < audio.shape[-1]:
                audio = audio[:, :expected]
    return audio.astype(np.float32), int(sr)


def load_audio(
    path: str | os.PathLike | bytes,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = True,
    on_truncated: str = "warn",
) -> torch.Tensor:
    r"""
    Read an audio file (soundfile for wav/flac/ogg, PyAV for everything FFmpeg decodes, video containers included)
    and resample it.

    Args:
        path (`str`, `os.PathLike` or `bytes`): The file, or its encoded bytes (e.g. a 🤗 `datasets` ``Audio``
            cell read with ``decode=False``).
        sample_rate (`int`, defaults to 44100): Output sample rate.
        mono (`bool`, defaults to `True`): Average the channels into one.
        on_truncated (`str`, defaults to `"warn"`): What to do when a file decoded by FFmpeg (mp4, m4a, mp3, ...)
            holds more than `TRUNCATION_TOLERANCE_SECONDS` less audio than its container index claims (a truncated
            download): ``"warn"`` (`TruncatedMediaWarning`), ``"raise"`` (`ValueError`) or ``"ignore"``. Damaged
            packets are skipped. (wav/flac headers are re-derived from the file size by both libsndfile and FFmpeg,
            so a truncated wav is not detected.)

    Returns:
        `torch.Tensor` of shape `(channels, num_samples)` (channels = 1 when `mono`), float32.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: `path` is an image, has no audio stream, cannot be decoded, or (``on_truncated="raise"``) is
            truncated.
    """
    if on_truncated not in TRUNCATION_ACTIONS:
        raise ValueError(f"`on_truncated` must be one of {TRUNCATION_ACTIONS}, got {on_truncated!r}.")
    if isinstance(path, (bytes, bytearray, memoryview)):
        if len(path) == 0:
            raise ValueError("`path` is empty bytes, not audio.")
        data, label = bytes(path), f"`path` {media_label(path)}"
        try:
            audio, sr = _read_with_soundfile(io.BytesIO(data))
        except Exception:  # not a libsndfile format: FFmpeg
            audio, sr = _read_with_pyav(io.BytesIO(data), label, on_truncated)
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`path` {path!r} is not a file.")
        try:
            audio, sr = _read_with_soundfile(path)
        except Exception:  # soundfile cannot read mp3/aac/mp4 on every libsndfile build: fall back to FFmpeg.
            audio, sr = _read_with_pyav(path, f"`path` {media_label(path)}", on_truncated)
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    audio = resample(audio.astype(np.float32), sr, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))


def save_audio(
    path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    subtype: str | None = None,
) -> str:
    r"""
    Write a waveform with soundfile (format from the extension: wav, flac, ogg).

    Args:
        path (`str` or `os.PathLike`): Output file; parent folders are created.
        audio (`torch.Tensor` or `np.ndarray` of shape `(channels, num_samples)` or `(num_samples,)`): Waveform in
            `[-1, 1]` (clipped).
        sample_rate (`int`, defaults to 44100): Its sample rate.
        subtype (`str`, *optional*): soundfile subtype (e.g. `"PCM_16"`, `"FLOAT"`); the format's default if `None`.

    Returns:
        `str`: The path written.
    """
    import soundfile as sf

    path = os.fspath(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"`audio` must have shape (channels, num_samples) or (num_samples,), got {audio.shape}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0).T, int(sample_rate), subtype=subtype)
    return path
