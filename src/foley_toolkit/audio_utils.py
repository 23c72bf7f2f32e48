"""Audio I/O, resampling, and the one module that turns a duration into sequence lengths.

Kling-Foley works at 44.1 kHz with a fixed audio representation: a BigVGAN-v2 log-mel front end (n_fft 2048, hop 512,
128 bands) and a MelVAE that halves the mel frame rate (one latent frame per 1024 samples, 43.07 Hz). The video side
samples CLIP frames at 8 fps and Synchformer frames at 25 fps, cut into 16-frame segments with stride 8 that yield 8
tokens each.

Every length formula of the project lives here (`seconds_to_samples`, `num_frames_at_rate`, `num_mel_frames`,
`num_sync_segments`, `sequence_lengths`); models and the pipeline call them with the numbers of their own configs.
The constants below are the defaults of those configs.
"""

from __future__ import annotations

import io
import math
import os
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

# Frame counts of float durations are floor(duration * rate); a small tolerance keeps 4.6 s * 25 fps =
# 114.99999999999999 at 115.
_FRAME_EPS = 1e-6

# Media container helpers live in `foley_toolkit.utils.video_io` (they open and check any FFmpeg input, audio
# included); importing them from here keeps working.
_VIDEO_IO_NAMES = (
    "TRUNCATION_ACTIONS",
    "TRUNCATION_TOLERANCE_SECONDS",
    "TruncatedMediaWarning",
    "check_decoded_duration",
    "claimed_stream_seconds",
    "is_image_container",
    "media_label",
    "open_media",
)


def __getattr__(name: str):
    if name in _VIDEO_IO_NAMES:
        from .utils import video_io

        return getattr(video_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def num_frames_at_rate(duration: float | Fraction, frame_rate: float | int | Fraction) -> int:
    """Frames of a `frame_rate` track that start within `duration` seconds: `floor(duration * frame_rate)`. Exact for
    a `Fraction` duration (29/25 s at 25 fps is 29 frames); a float duration gets a 1e-6 tolerance against round-off
    (4.6 s at 25 fps is 115, not 114)."""
    if isinstance(duration, Fraction):
        return math.floor(duration * Fraction(frame_rate))
    return int(math.floor(duration * frame_rate + _FRAME_EPS))


def seconds_to_samples(seconds: float | Fraction, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples in (or sample index at) `seconds`: `round(seconds * sample_rate)`."""
    return int(round(seconds * sample_rate))


def latent_frames_to_seconds(
    num_latent_frames: int, samples_per_latent_frame: int = SAMPLES_PER_LATENT_FRAME, sample_rate: int = SAMPLE_RATE
) -> float:
    """Seconds covered by `num_latent_frames` latent frames: `num_latent_frames * samples_per_latent_frame /
    sample_rate` (1024 samples per frame at 44.1 kHz: 345 frames are 8.01 s)."""
    return num_latent_frames * samples_per_latent_frame / sample_rate


def num_mel_frames(num_samples: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Mel frames the front end produces for `num_samples` samples (reflect pad `(n_fft - hop) / 2`, `center=False`):
    `(num_samples + (n_fft - hop) - n_fft) // hop + 1`, e.g. 689 for 352,800 samples."""
    return (num_samples + (n_fft - hop_length) - n_fft) // hop_length + 1


def num_sync_segments(
    num_frames: int, segment_frames: int = SYNC_SEGMENT_FRAMES, segment_stride: int = SYNC_SEGMENT_STRIDE
) -> int:
    """Synchformer segments of `segment_frames` frames, `segment_stride` apart, that fit in `num_frames` frames:
    `(num_frames - segment_frames) // segment_stride + 1`, 0 when fewer than `segment_frames`."""
    return 0 if num_frames < segment_frames else (num_frames - segment_frames) // segment_stride + 1


def sync_window_frames(
    num_segments: int, segment_frames: int = SYNC_SEGMENT_FRAMES, segment_stride: int = SYNC_SEGMENT_STRIDE
) -> int:
    """Frames spanned by `num_segments` Synchformer segments (the inverse of `num_sync_segments`):
    `segment_frames + (num_segments - 1) * segment_stride`, e.g. 48 frames (1.92 s at 25 fps) for 5 segments."""
    if num_segments < 1:
        raise ValueError(f"`num_segments` must be at least 1, got {num_segments}.")
    return segment_frames + (num_segments - 1) * segment_stride


def sequence_lengths(
    duration: float,
    sample_rate: int = SAMPLE_RATE,
    *,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    latent_downsample: int = LATENT_DOWNSAMPLE,
    clip_frame_rate: float = CLIP_FRAME_RATE,
    sync_frame_rate: float = SYNC_FRAME_RATE,
    sync_segment_frames: int = SYNC_SEGMENT_FRAMES,
    sync_segment_stride: int = SYNC_SEGMENT_STRIDE,
    sync_tokens_per_segment: int = SYNC_TOKENS_PER_SEGMENT,
) -> dict[str, int]:
    r"""
    Every sequence length of a clip of `duration` seconds, computed in one place. The defaults are Kling-Foley's;
    `KlingFoleyPipeline` passes the numbers of its components' configs (the VAE's sample rate, FFT size, hop and
    downsampling, the video processor's frame rates, the sync encoder's segment size, stride and tokens).

    Args:
        duration (`float`): Clip length in seconds (> 0).
        sample_rate (`int`, defaults to 44100): Waveform sample rate.
        n_fft, hop_length (`int`, defaults to 2048, 512): Mel front end.
        latent_downsample (`int`, defaults to 2): Mel frames per latent frame.
        clip_frame_rate, sync_frame_rate (`float`, defaults to 8, 25): Frame rates of the CLIP and Synchformer tracks.
        sync_segment_frames, sync_segment_stride, sync_tokens_per_segment (`int`, defaults to 16, 8, 8): Synchformer
            segments.

    Returns:
        `dict[str, int]` with (numbers for 8 s at the defaults)
        - `num_samples`: `round(duration * sample_rate)` (352,800),
        - `mel_frames`: frames of the log-mel front end, `num_mel_frames(num_samples)` (689),
        - `latent_frames`: `ceil(mel_frames / latent_downsample)`, what `MelVAE.encode` returns for that waveform
          (345),
        - `audio_tokens`: `ceil(num_samples / (hop_length * latent_downsample))`, the latent length whose decode
          covers every sample (the transformer's audio sequence length; equals `latent_frames` unless
          `num_samples % 1024` is in `(0, 512)`, e.g. 44 against 43 for 1 s),
        - `output_mel_frames`: `ceil(num_samples / hop_length)`, the decoded mel frames that cover every sample (690),
        - `clip_frames`: CLIP frames, `num_frames_at_rate(duration, clip_frame_rate)` (64),
        - `sync_frames`: Synchformer frames, `num_frames_at_rate(duration, sync_frame_rate)` (200),
        - `sync_segments`: `num_sync_segments(sync_frames)` (24; 0 if fewer than 16 frames),
        - `sync_tokens`: `sync_segments * sync_tokens_per_segment` (192).
    """
    if isinstance(duration, bool) or not isinstance(duration, (int, float, Fraction)) or not math.isfinite(duration):
        raise ValueError(f"`duration` must be a positive number of seconds, got {duration!r}.")
    if duration <= 0:
        raise ValueError(f"`duration` must be a positive number of seconds, got {duration!r}.")
    num_samples = seconds_to_samples(duration, sample_rate)
    mel_frames = max(num_mel_frames(num_samples, n_fft, hop_length), 0)
    sync_frames = num_frames_at_rate(duration, sync_frame_rate)
    sync_segments = num_sync_segments(sync_frames, sync_segment_frames, sync_segment_stride)
    return {
        "num_samples": num_samples,
        "mel_frames": mel_frames,
        "latent_frames": math.ceil(mel_frames / latent_downsample),
        "audio_tokens": math.ceil(num_samples / (hop_length * latent_downsample)),
        "output_mel_frames": math.ceil(num_samples / hop_length),
        "clip_frames": num_frames_at_rate(duration, clip_frame_rate),
        "sync_frames": sync_frames,
        "sync_segments": sync_segments,
        "sync_tokens": sync_segments * sync_tokens_per_segment,
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


def _read_with_pyav(source, label: str, on_truncated: str = "warn") -> tuple[np.ndarray, int]:
    import av

    from .utils.video_io import check_decoded_duration, claimed_stream_seconds, open_media

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
    from .utils.video_io import TRUNCATION_ACTIONS, media_label

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
