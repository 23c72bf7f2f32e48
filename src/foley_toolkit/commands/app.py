"""`foley-toolkit app`: a Gradio web app around a saved `KlingFoleyPipeline`.

    foley-toolkit app --model DIR_OR_HUB_ID [--port 7860] [--host 127.0.0.1] [--max-seconds 120]

Upload a video (or pick the bundled example), describe the sound, press Generate: the page shows the video with the
generated sound muxed in, the spectrogram of the sound, and links to download the .wav and the .mp4. Without a video
the prompt alone makes `duration` seconds of sound (text-to-audio). Requests wait in one queue and run one at a time
(the pipeline uses every core of a CPU machine), with a progress bar fed by the pipeline's step callback. Bad input
(a file that is not a video, a video longer than `--max-seconds`, neither a prompt nor a video) is answered with a
message in the page. The server listens on 127.0.0.1 only unless `--host` says otherwise.

Needs `pip install 'foley-toolkit[app]'` (gradio, matplotlib). `build_app` builds the page for tests and notebooks.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# The example video of the repository checkout (absent from a wheel install, then the page has no example).
DEMO_VIDEO = Path(__file__).resolve().parents[3] / "examples" / "assets" / "demo.mp4"
DEFAULT_MAX_SECONDS = 120.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "app",
        help="serve a Gradio web app that generates sound for uploaded videos or prompts",
        description="Serve a web page for a KlingFoleyPipeline: upload a video or write a prompt, get the video with "
        "its generated sound, the .wav and the spectrogram. Requests run one at a time. Needs foley-toolkit[app].",
    )
    parser.add_argument("--model", required=True, help="pipeline directory (save_pretrained) or Hub repo id")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help=f"longest video or text-to-audio duration accepted, in seconds (default {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--output-dir", default=None, help="where results are written (default: a new folder in the system temp dir)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype"
    )
    parser.set_defaults(func=run)


class FoleyApp:
    r"""
    The app's state and its one action: a loaded pipeline, the folder results are written to, and `generate`, which
    the Generate button calls (also callable directly, e.g. from tests).

    Args:
        pipe (`KlingFoleyPipeline`): The pipeline, already on its device.
        output_dir (`str` or `os.PathLike`): Folder for the results (one sub-folder per request).
        max_seconds (`float`): Longest video (or text-to-audio duration) accepted.
    """

    def __init__(self, pipe, output_dir: str | os.PathLike, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        if not max_seconds > 0:
            raise ValueError(f"`max_seconds` must be positive, got {max_seconds}.")
        self.pipe = pipe
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # The pipeline refuses longer inputs anyway; a smaller app limit keeps a shared CPU server responsive.
        self.max_seconds = min(float(max_seconds), float(getattr(pipe, "max_duration_seconds", max_seconds)))

    def check_inputs(self, video: str | None, prompt: str | None, duration: float | None) -> float | None:
        """Raise `ValueError` with a message for the page when the inputs can't be generated; return the video's
        duration in seconds (None without a video)."""
        from ..audio_utils import claimed_stream_seconds, open_media

        prompt = (prompt or "").strip()
        if video is None and not prompt:
            raise ValueError("Upload a video or write a prompt (text-to-audio needs a prompt).")
        if video is None:
            if duration is None or not 0 < duration <= self.max_seconds:
                raise ValueError(f"Duration must be in (0, {self.max_seconds:g}] seconds, got {duration}.")
            return None
        name = os.path.basename(video)
        # ValueError: not a video, an image, no video stream. (A message must not start with a quote: Gradio's
        # message box strips quotes at both ends.)
        container = open_media(video, f"The file {name!r}", "video")
        try:
            stream = container.streams.video[0]
            seconds = claimed_stream_seconds(container, stream)
            if seconds is None and container.duration is not None:
                import av

                seconds = container.duration / av.time_base
        finally:
            container.close()
        if seconds is not None and seconds > self.max_seconds:
            raise ValueError(
                f"The video {name!r} is {seconds:.1f} s long; "
                f"this app accepts videos of at most {self.max_seconds:g} s."
            )
        return seconds

    def generate(
        self,
        video: str | None,
        prompt: str | None,
        negative_prompt: str | None,
        steps: int,
        guidance: float,
        seed: int,
        duration: float | None,
        progress=None,
    ) -> dict:
        r"""
        Generate the sound and write the results.

        Args:
            video (`str`, *optional*): Path of the uploaded video; None for text-to-audio.
            prompt, negative_prompt (`str`, *optional*): Text conditions (empty = none).
            steps (`int`): Flow-matching steps. guidance (`float`): CFG scale (<= 1: off). seed (`int`): Noise seed.
            duration (`float`, *optional*): Seconds of sound without a video (ignored with one: the whole video).
            progress (*optional*): Called as `progress((done, total), desc=...)` (a `gr.Progress`).

        Returns:
            `dict` with `"wav"`, `"mp4"` (None without a video) and `"png"` paths, `"seconds"`, `"peak_dbfs"` and
            `"summary"` (one line for the page). Raises `ValueError` / `FileNotFoundError` for bad input.
        """
        import torch

        from ..audio_utils import save_audio
        from ..evaluation.level_metrics import peak_dbfs
        from ..plotting import save_spectrogram
        from ..video_processor import write_video_with_audio

        steps, seed = int(steps), int(seed)
        if steps < 1:
            raise ValueError(f"Steps must be >= 1, got {steps}.")
        try:
            self.check_inputs(video, prompt, duration)
        except (ValueError, FileNotFoundError) as error:
            raise _without_server_path(error, video) from error
        prompt = (prompt or "").strip() or None
        negative_prompt = (negative_prompt or "").strip() or None

        def on_step_end(pipe, step, timestep, callback_kwargs):
            if progress is not None:
                progress((step + 1, steps), desc=f"denoising, step {step + 1} of {steps}")
            return {}

        if progress is not None:
            progress((0, steps), desc="encoding the video and the prompt")
        start = time.perf_counter()
        try:
            output = self.pipe(
                video=video,
                prompt=prompt,
                negative_prompt=negative_prompt,
                duration=None if video is not None else float(duration),
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
                callback_on_step_end=on_step_end,
            )
        except (ValueError, FileNotFoundError) as error:  # bad input the pipeline found (not a video, ...)
            raise _without_server_path(error, video) from error
        elapsed = time.perf_counter() - start
        audio = output.audios[0]  # (channels, samples)

        stem = Path(video).stem if video is not None else "text_to_audio"
        folder = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-", dir=self.output_dir))
        wav = save_audio(folder / f"{stem}_foley.wav", audio, output.sample_rate)
        mp4 = None
        if video is not None:
            mp4 = write_video_with_audio(video, audio, output.sample_rate, folder / f"{stem}_foley.mp4")
        seconds = audio.shape[-1] / output.sample_rate
        png = save_spectrogram(audio, folder / f"{stem}_spectrogram.png", output.sample_rate, title=f"{stem}_foley")
        peak = peak_dbfs(audio)
        summary = (
            f"{seconds:.2f} s, {audio.shape[0]} channel(s) at {output.sample_rate} Hz, peak {peak:.1f} dBFS; "
            f"generated in {elapsed:.1f} s ({steps} steps, guidance {float(guidance):g}, seed {seed})"
        )
        return {"wav": wav, "mp4": mp4, "png": png, "seconds": seconds, "peak_dbfs": peak, "summary": summary}


def _without_server_path(error: Exception, video: str | None) -> Exception:
    """The same error with the uploaded file's server-side path (a temp folder the user never saw) replaced by its
    name, as the page shows it."""
    message = str(error)
    if video is not None:
        message = message.replace(repr(video), repr(os.path.basename(video))).replace(video, os.path.basename(video))
    return type(error)(message)


def build_app(
    pipe_or_model_dir,
    output_dir: str | os.PathLike | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    examples: list[str] | None = None,
    device: str | None = None,
    dtype=None,
):
    r"""
    Build the app's page (a `gr.Blocks` with its queue: one request at a time).

    Args:
        pipe_or_model_dir (`KlingFoleyPipeline`, `str` or `os.PathLike`): A loaded pipeline, or a directory / Hub id
            to load one from (on `device`, in `dtype`).
        output_dir (`str` or `os.PathLike`, *optional*): Folder for results; a new folder in the system temp dir (where
            Gradio may serve files from) if None. Pass it to `launch(allowed_paths=[...])` when it lies elsewhere.
        max_seconds (`float`, defaults to 120): Longest video or text-to-audio duration accepted.
        examples (`list[str]`, *optional*): Example videos offered under the upload box; the repository's
            `examples/assets/demo.mp4` when it exists if None.
        device (`str`, *optional*), dtype (`torch.dtype`, *optional*): Where and how to load `pipe_or_model_dir`.

    Returns:
        `gr.Blocks`, with `.foley_app` set to its `FoleyApp`.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    import gradio as gr

    if isinstance(pipe_or_model_dir, (str, os.PathLike)):
        import torch

        from ..pipelines.kling_foley import KlingFoleyPipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = KlingFoleyPipeline.from_pretrained(pipe_or_model_dir, dtype=dtype or torch.float32).to(device)
    else:
        pipe = pipe_or_model_dir
    pipe.set_progress_bar_config(disable=True)  # the page has its own progress bar
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix="foley-toolkit-app-")
    app = FoleyApp(pipe, output_dir, max_seconds)
    if examples is None:
        examples = [str(DEMO_VIDEO)] if DEMO_VIDEO.is_file() else []

    # Gradio finds the progress bar by a `gr.Progress()` default argument (hence the call in the signature).
    def on_generate(
        video, prompt, negative_prompt, steps, guidance, seed, duration, progress=gr.Progress()  # noqa: B008
    ):
        try:
            result = app.generate(video, prompt, negative_prompt, steps, guidance, seed, duration, progress)
        except (ValueError, FileNotFoundError) as error:
            # Shown as a message in the page (no traceback); the outputs keep their previous values.
            raise gr.Error(str(error), title="Cannot generate") from error
        files = [path for path in (result["wav"], result["mp4"]) if path is not None]
        return result["mp4"], result["wav"], result["png"], files, result["summary"]

    with gr.Blocks(title="Kling-Foley") as demo:
        gr.Markdown(
            "# Kling-Foley\nUpload a video (or pick the example), describe the sound and press **Generate**. "
            f"Without a video, the prompt alone makes *Duration* seconds of sound. Videos up to {app.max_seconds:g} s; "
            "one request runs at a time, the others wait in the queue."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[video], label="Example video")
                prompt = gr.Textbox(label="Prompt", placeholder="footsteps on gravel, birds", elem_id="prompt")
                negative_prompt = gr.Textbox(
                    label="Negative prompt", placeholder="music, speech", elem_id="negative-prompt"
                )
                with gr.Row():
                    steps = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.1, label="Guidance", elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    duration = gr.Number(
                        value=min(8.0, app.max_seconds),
                        minimum=0,
                        maximum=app.max_seconds,
                        label="Duration (s), text-to-audio only",
                        elem_id="duration",
                    )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                result_video = gr.Video(label="Result", interactive=False, elem_id="result-video")
                result_audio = gr.Audio(label="Sound", type="filepath", interactive=False, elem_id="result-audio")
                spectrogram = gr.Image(label="Spectrogram", type="filepath", interactive=False, elem_id="spectrogram")
                downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="downloads")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        button.click(
            on_generate,
            inputs=[video, prompt, negative_prompt, steps, guidance, seed, duration],
            outputs=[result_video, result_audio, spectrogram, downloads, status],
            concurrency_limit=1,
        )
    demo.queue(default_concurrency_limit=1)
    demo.foley_app = app
    return demo


def run(args) -> int:
    import importlib.util

    missing = [name for name in ("gradio", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"foley-toolkit app: error: needs {' and '.join(missing)}: pip install 'foley-toolkit[app]'",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.port <= 65535:
        print(f"foley-toolkit app: error: --port must be in [0, 65535], got {args.port}", file=sys.stderr)
        return 2
    if not args.max_seconds > 0:
        print(f"foley-toolkit app: error: --max-seconds must be positive, got {args.max_seconds}", file=sys.stderr)
        return 2

    import torch

    from ..pipelines.kling_foley import KlingFoleyPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = KlingFoleyPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
    except Exception as error:  # noqa: BLE001 - missing folder, unknown Hub id offline, truncated weights, ...
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"foley-toolkit app: error: cannot load --model {args.model!r}: {type(error).__name__}: {reason}",
              file=sys.stderr)  # fmt: skip
        return 2
    demo = build_app(pipe, output_dir=args.output_dir, max_seconds=args.max_seconds)
    print(f"results are written under {demo.foley_app.output_dir}")
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        allowed_paths=[str(demo.foley_app.output_dir)],
    )
    return 0
