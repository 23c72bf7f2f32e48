"""`foley-toolkit generate`: sound for a video (or a prompt) with a saved `KlingFoleyPipeline`.

    foley-toolkit generate --model DIR_OR_HUB_ID --video clip.mp4 --prompt "..." --out clip_foley.mp4
    foley-toolkit generate --model DIR --prompt "rain on a tin roof" --duration 8 --out rain.wav --plot rain.png

The output format follows the extension of `--out`: `.wav` / `.flac` (soundfile) or `.mp4` / `.mov` / `.mkv`
(the video with the generated audio muxed in, its pictures copied as they are; needs `--video`). Either way the
audio reaches the file block by block as the pipeline produces it, so a long video never holds its whole waveform. `--plot` also writes the log-mel spectrogram of the
result as a PNG (`foley_toolkit.plotting.save_spectrogram`, needs matplotlib).
"""

from __future__ import annotations

import os
import sys
import time

AUDIO_EXTENSIONS = (".wav", ".flac")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate audio for a video (or a text prompt) with a KlingFoleyPipeline",
        description="Generate audio for a video (video-to-audio, optionally with a prompt) or for a prompt alone "
        "(text-to-audio, needs --duration). Writes .wav/.flac, or .mp4 with the audio muxed into the video.",
    )
    parser.add_argument("--model", required=True, help="pipeline directory (save_pretrained) or Hub repo id")
    parser.add_argument("--video", default=None, help="input video file; without it --duration is required")
    parser.add_argument("--prompt", default=None, help="text description of the sound")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from, e.g. 'music, speech'")
    parser.add_argument("--steps", type=int, default=20, help="flow-matching steps (default 20)")
    parser.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance scale (<= 1: off)")
    parser.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
        help="guide only the steps whose noise level sigma is in [LOW, HIGH] (0 <= LOW <= HIGH <= 1); the others run "
        "the conditional branch alone (faster). Default: every step",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial noise")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of audio (default: the video's duration)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype"
    )
    parser.add_argument("--lora", default=None, help="optional LoRA directory / repo to load before generating")
    parser.add_argument("--out", required=True, help="output file: .wav, .flac, or .mp4/.mov/.mkv (needs --video)")
    parser.add_argument(
        "--window-seconds",
        default="auto",
        help="past this length, generate in overlapping windows of it (long videos, flat memory; --out is written as "
        "the audio is produced, muxed into a copy of the video for .mp4/.mov/.mkv); 'auto' (default): the length the "
        "transformer was trained on, 'none': "
        "one pass over the whole clip",
    )
    parser.add_argument(
        "--plot", default=None, help="also write the spectrogram of the result to this .png (needs matplotlib)"
    )
    parser.set_defaults(func=run)


def _check_args(args) -> str | None:
    """Return an error message for inconsistent arguments, else None."""
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in AUDIO_EXTENSIONS + VIDEO_EXTENSIONS:
        return f"--out must end with one of {AUDIO_EXTENSIONS + VIDEO_EXTENSIONS}, got {args.out!r}"
    if args.video is None and args.prompt is None:
        return "pass --video, --prompt, or both"
    if args.video is None and args.duration is None:
        return "--duration is required without --video (text-to-audio)"
    if args.video is None and extension in VIDEO_EXTENSIONS:
        return f"--out {args.out!r} is a video file, which needs --video"
    if args.video is not None and not os.path.isfile(args.video):
        return f"--video {args.video!r}: no such file"
    if args.steps < 1:
        return f"--steps must be >= 1, got {args.steps}"
    if _window_seconds(args.window_seconds) is False:
        return f"--window-seconds must be a positive number of seconds, 'auto' or 'none', got {args.window_seconds!r}"
    if args.plot is not None:
        # Checked before generating: a typo in --plot must not cost a whole generation.
        from ..plotting import matplotlib_available

        if os.path.splitext(args.plot)[1].lower() != ".png":
            return f"--plot must end with .png, got {args.plot!r}"
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            return f"--plot {args.plot!r}: folder {folder!r} does not exist"
        if not matplotlib_available():
            return "--plot needs matplotlib: pip install 'foley-toolkit[plot]'"
    return None


def _window_seconds(value: str) -> float | str | None | bool:
    """`--window-seconds` as the pipeline's `window_seconds`: 'auto', None ('none'), or seconds; False if invalid."""
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("none", "off"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return False
    return seconds if seconds > 0 and seconds != float("inf") else False


def run(args) -> int:
    error = _check_args(args)
    if error is not None:
        print(f"foley-toolkit generate: error: {error}", file=sys.stderr)
        return 2

    import torch

    from ..audio_utils import load_audio
    from ..pipelines.kling_foley import KlingFoleyPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    try:
        pipe = KlingFoleyPipeline.from_pretrained(args.model, dtype=dtype).to(device)
        if args.lora:
            pipe.load_lora_weights(args.lora)
    except Exception as error:  # noqa: BLE001 - missing folder, unknown Hub id offline, truncated weights, ...
        # The CLI's contract: one line on stderr and exit code 2, never a traceback, for any model that can't load.
        reason = " ".join(str(error).split()) or type(error).__name__
        what = f"--lora {args.lora!r}" if "pipe" in locals() else f"--model {args.model!r}"
        print(f"foley-toolkit generate: error: cannot load {what}: {type(error).__name__}: {reason}", file=sys.stderr)
        return 2

    from ..training_utils import atomic_output

    kwargs = dict(
        video=args.video,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        duration=args.duration,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_interval=args.guidance_interval,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        output_type="np",
        window_seconds=_window_seconds(args.window_seconds),
    )
    start = time.perf_counter()
    try:
        with atomic_output(args.out) as partial_path:
            # Written block by block as the pipeline produces it (audio file, or muxed into the video with its
            # packets copied): the whole waveform is never in memory.
            channels, sample_rate, seconds = _generate_streaming(pipe, kwargs, partial_path, args.video)
    except (ValueError, FileNotFoundError) as error:  # bad input (not a video, duration too long, ...)
        print(f"foley-toolkit generate: error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.out}: {channels} channel(s), {seconds:.2f} s at {sample_rate} Hz "
        f"(generated in {elapsed:.1f} s)"
    )
    if args.plot is not None:
        # streamed to disk: the picture needs the whole clip, read it back
        audio = load_audio(args.out, sample_rate=sample_rate, mono=False)
        from ..plotting import save_spectrogram

        with atomic_output(args.plot) as partial_path:
            save_spectrogram(audio, partial_path, sample_rate, title=os.path.basename(args.out))
        print(f"wrote {args.plot}: spectrogram")
    return 0


def _generate_streaming(pipe, kwargs: dict, path: str, video: str | None):
    """Run `pipe(**kwargs)` writing each finished audio block of the (single) output to `path` as it comes: a
    `StreamingAudioWriter` for .wav/.flac, a `VideoAudioMuxer` (the video's packets copied, the audio interleaved)
    for .mp4/.mov/.mkv. Returns `(channels, sample_rate, seconds written)`."""
    from ..pipelines.kling_foley.long_form import StreamingAudioWriter
    from ..utils.video_io import VideoAudioMuxer

    state = {}
    if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS:
        # Opened before generating: a video the muxer cannot read fails before the generation, not after it.
        state["writer"] = VideoAudioMuxer(video, path, pipe.sample_rate)

    def write(block):  # (1, channels, samples)
        if "writer" not in state:
            state["writer"] = StreamingAudioWriter(path, pipe.sample_rate, channels=block.shape[1])
        state.setdefault("channels", block.shape[1])
        state["writer"].write(block[0])

    try:
        pipe(**kwargs, callback_on_output_block=write)
    except BaseException:
        if isinstance(state.get("writer"), VideoAudioMuxer):
            state["writer"].__exit__(*sys.exc_info())  # release the files without finishing the soundtrack
        elif "writer" in state:
            state["writer"].close()
        raise
    writer = state["writer"]
    writer.close()
    if isinstance(writer, VideoAudioMuxer):  # the soundtrack lasts as long as the video (padded or trimmed)
        seconds = float(writer.duration)
    else:
        seconds = writer.frames_written / writer.sample_rate
    return state["channels"], pipe.sample_rate, seconds
