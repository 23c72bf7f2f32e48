"""Where the time of one `KlingFoleyPipeline(video=...)` call goes, stage by stage (not a test).

Loads a saved pipeline folder (default `checkpoints/kling-foley-demo`), runs `pipe(video=..., prompt=...)` once to
warm up and then `--repeats` times, and times each stage of the real call with forward hooks on the components
and wrappers around the pipeline's own methods (no copy of the pipeline):

- `video_decode`: `pipe.load_videos` (PyAV decode and resampling to 8 / 25 fps),
- `frame_preprocess`: `pipe.video_processor.preprocess` (tracks fitted to the duration, CLIP normalisation, resize),
- `clip_vision`, `synchformer`, `text_t5`: the encoders' forwards (Synchformer's includes its chunk-by-chunk frame
  normalisation),
- `conditions`: `transformer.prepare_conditions` (once per call),
- `flow_steps`: every transformer forward (`num_inference_steps` calls, batch 2 with guidance),
- `vae_decode`, `mono2stereo`, `vocoder`: the decoders,
- `dc_removal`: `pipe.remove_dc` (mean subtraction and zero-phase high-pass),
- `other`: the rest of the call (tokenising, scheduler, casts, Python).

It prints a table (median seconds over the repeats and share of the median total) and one JSON object. It also
times the vocoder on the two channels of a stereo clip as one batch of 2 against two batch-1 calls (the pipeline
does the former), for the pipeline's vocoder and for a full-size BigVGAN-v2 `MMAudioVocoder` with random weights
(`--bigvgan_seconds`, 0 skips it); the two variants are interleaved run by run, so their ratio holds on a loaded
machine even where the absolute times do not. `--compare_padded_text` repeats the pipeline timing with the text
padded to `max_sequence_length`, the path before `KlingFoleyPipeline.trim_text_padding` (sequential, not
interleaved: compare it only within one run on a quiet machine).

    python benchmarks/bench_pipeline.py [--pipeline checkpoints/kling-foley-demo] [--video examples/assets/demo.mp4]
        [--dtype fp32|bf16] [--repeats 3] [--steps 20] [--threads N] [--bigvgan_seconds 1.0] [--compare_padded_text]
        [--json_out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import types
from collections import defaultdict

import torch

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config, build_vocoder


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPONENTS = ("vision_encoder", "sync_encoder", "text_encoder", "transformer", "vae", "mono2stereo", "vocoder")
STAGES = [
    "video_decode",
    "frame_preprocess",
    "clip_vision",
    "synchformer",
    "text_t5",
    "conditions",
    "flow_steps",
    "vae_decode",
    "mono2stereo",
    "vocoder",
    "dc_removal",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="checkpoints/kling-foley-demo", help="Saved pipeline folder.")
    parser.add_argument("--video", default="examples/assets/demo.mp4", help="Video file to generate audio for.")
    parser.add_argument("--prompt", default="footsteps on gravel", help="Text prompt.")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="Weights' dtype.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls after one warm-up (median reported).")
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps.")
    parser.add_argument("--guidance_scale", type=float, default=4.5, help="CFG scale (<= 1: no guidance).")
    parser.add_argument("--duration", type=float, default=None, help="Seconds of the video to use (default all).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument(
        "--bigvgan_seconds", type=float, default=1.0, help="Clip length for the full-size BigVGAN-v2 batching check."
    )
    parser.add_argument(
        "--compare_padded_text",
        action="store_true",
        help="Also time the call with the text padded to 128 tokens (the path before trimming).",
    )
    parser.add_argument("--json_out", default=None, help="Also write the JSON object to this file.")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.pipeline, "model_index.json")):
        parser.error(f"--pipeline: {args.pipeline!r} is not a saved pipeline folder (no model_index.json).")
    if not os.path.isfile(args.video):
        parser.error(f"--video: no video file at {args.video!r}.")
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1.")
    if args.bigvgan_seconds < 0:
        parser.error("--bigvgan_seconds must be >= 0.")
    return args


class StageTimer:
    """Accumulates wall time per stage from forward hooks on modules and wrappers around methods of one object.

    Stages do not nest (each hooked module / method is a separate part of the call), so their sum plus `other` is the
    call's time. On CUDA every boundary synchronises, so a stage is charged for its own kernels.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._handles = []
        self._patched = []
        self._starts: dict[str, list[float]] = defaultdict(list)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _start(self, name: str) -> None:
        self._starts[name].append(self._now())

    def _stop(self, name: str) -> None:
        self.seconds[name] += self._now() - self._starts[name].pop()
        self.calls[name] += 1

    def module(self, name: str, module: torch.nn.Module | None) -> None:
        if module is None:
            return
        self._handles.append(module.register_forward_pre_hook(lambda *_: self._start(name)))
        self._handles.append(module.register_forward_hook(lambda *_: self._stop(name)))

    def method(self, name: str, owner, attribute: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self._start(name)
            try:
                return original(*args, **kwargs)
            finally:
                self._stop(name)

        setattr(owner, attribute, timed)  # an instance (or module) attribute shadowing the original
        self._patched.append((owner, attribute, original))

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, attribute, original in reversed(self._patched):
            if isinstance(owner, types.ModuleType):
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # the class's method shows through again
        self._handles, self._patched = [], []


def instrument(pipe: KlingFoleyPipeline, timer: StageTimer) -> None:
    timer.method("video_decode", pipe, "load_videos")
    # Fitting both tracks to the duration and the CLIP pixels; the sync frames are normalised chunk by chunk inside
    # the sync encoder's forward (`frame_transform`), so that cost is part of `synchformer`.
    timer.method("frame_preprocess", pipe.video_processor, "preprocess")
    timer.module("clip_vision", pipe.vision_encoder)
    timer.module("synchformer", pipe.sync_encoder)
    timer.module("text_t5", pipe.text_encoder)
    timer.method("conditions", pipe.transformer, "prepare_conditions")
    timer.module("flow_steps", pipe.transformer)
    timer.method("vae_decode", pipe.vae, "decode")
    timer.module("mono2stereo", pipe.mono2stereo)
    timer.module("vocoder", pipe.vocoder)
    timer.method("dc_removal", pipe, "remove_dc")


def time_pipeline(pipe: KlingFoleyPipeline, args, device: torch.device) -> dict:
    timer = StageTimer(device)
    instrument(pipe, timer)
    kwargs = {
        "video": args.video,
        "prompt": args.prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "duration": args.duration,
        "output_type": "pt",
    }
    pipe.set_progress_bar_config(disable=True)
    runs, audio, text_tokens = [], None, set()
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: text_tokens.add(kwargs["conditions"].text_hidden_states.shape[1]),
        with_kwargs=True,
    )
    try:
        for repeat in range(args.repeats + 1):  # the first is the warm-up
            timer.reset()
            start = timer._now()
            audio = pipe(generator=torch.Generator().manual_seed(0), **kwargs).audios
            total = timer._now() - start
            if repeat == 0:
                continue
            run = {name: timer.seconds.get(name, 0.0) for name in STAGES}
            run["other"] = total - sum(run.values())
            run["total"] = total
            runs.append((run, dict(timer.calls)))
    finally:
        timer.remove()
        handle.remove()

    medians = {name: statistics.median(run[name] for run, _ in runs) for name in STAGES + ["other", "total"]}
    calls = runs[-1][1]
    stages = {
        name: {
            "median_s": medians[name],
            "share": medians[name] / medians["total"],
            "calls": calls.get(name, 0) if name != "other" else None,
        }
        for name in STAGES + ["other"]
    }
    audio = audio.float()
    peak = float(audio.abs().max())
    level = {
        "shape": list(audio.shape),
        "peak_dbfs": 20 * torch.log10(torch.tensor(max(peak, 1e-12))).item(),
        "rms_dbfs": 20 * torch.log10(audio.pow(2).mean().sqrt().clamp(min=1e-12)).item(),
        "dc_offset": float(audio.mean(dim=-1).abs().max()),
    }
    return {
        "stages": stages,
        "total_s": medians["total"],
        "runs_total_s": [r["total"] for r, _ in runs],
        "text_tokens": sorted(text_tokens),  # text sequence length the transformer saw
        "audio": level,
    }


@torch.inference_mode()
def time_vocoder_batching(vocoder: torch.nn.Module, mel_frames: int, repeats: int, device, dtype) -> dict:
    """Two channels of `mel_frames` log-mel frames: one batch-2 call vs two batch-1 calls, interleaved per repeat."""
    generator = torch.Generator().manual_seed(0)
    num_mels = getattr(vocoder.config, "num_mels", None) or getattr(vocoder.config, "n_mels", 128)
    mel = (torch.randn(2, num_mels, mel_frames, generator=generator) - 4.0).to(device=device, dtype=dtype)

    def clock(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def batched():
        return vocoder(mel).sample

    def separate():
        return [vocoder(mel[i : i + 1]).sample for i in range(2)]

    batched(), separate()  # warm-up
    times = {"batch2_s": [], "two_batch1_s": []}
    for _ in range(repeats):
        times["batch2_s"].append(clock(batched))
        times["two_batch1_s"].append(clock(separate))
    batch2, two_batch1 = statistics.median(times["batch2_s"]), statistics.median(times["two_batch1_s"])
    one_channel = min(times["two_batch1_s"]) / 2
    return {
        "vocoder": type(vocoder).__name__,
        "parameters": sum(p.numel() for p in vocoder.parameters()),
        "mel_frames": mel_frames,
        "batch2_s": batch2,
        "two_batch1_s": two_batch1,
        "batch2_over_two_batch1": batch2 / two_batch1,
        "batch2_over_one_channel": batch2 / one_channel,
    }


def print_table(result: dict) -> None:
    print(f"\n{'stage':<18}{'seconds':>10}{'share':>9}{'calls':>7}")
    for name, stage in result["pipeline"]["stages"].items():
        calls = "" if stage["calls"] is None else str(stage["calls"])
        print(f"{name:<18}{stage['median_s']:>10.3f}{100 * stage['share']:>8.1f}%{calls:>7}")
    print(f"{'total':<18}{result['pipeline']['total_s']:>10.3f}{100.0:>8.1f}%")
    print(f"text tokens seen by the transformer: {result['pipeline']['text_tokens']}")
    if "padded_text" in result:
        padded = result["padded_text"]
        print(
            f"flow steps with text padded to {padded['text_tokens']['padded']} tokens: "
            f"{padded['flow_steps_s']['padded']:.3f} s; trimmed to {padded['text_tokens']['trimmed']}: "
            f"{padded['flow_steps_s']['trimmed']:.3f} s (ratio {padded['flow_steps_trimmed_over_padded']:.2f})"
        )
    for check in result["vocoder_batching"]:
        print(
            f"vocoder {check['vocoder']} ({check['parameters'] / 1e6:.1f}M params, {check['mel_frames']} mel frames "
            f"x 2 channels): batch 2 {check['batch2_s']:.3f} s, 2 x batch 1 {check['two_batch1_s']:.3f} s, "
            f"ratio {check['batch2_over_two_batch1']:.2f} "
            f"(batch 2 = {check['batch2_over_one_channel']:.2f} x one channel)"
        )


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    pipe = KlingFoleyPipeline.from_pretrained(args.pipeline, dtype=dtype).to(device)
    result = {
        "pipeline_folder": args.pipeline,
        "video": args.video,
        "prompt": args.prompt,
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "components": {name: type(getattr(pipe, name)).__name__ for name in COMPONENTS},
        "note": "wall-clock times on a possibly shared machine: compare shares and ratios within one run, not absolute "
        "seconds across runs",
    }
    result["pipeline"] = time_pipeline(pipe, args, device)
    if args.compare_padded_text:
        # The same call with the text padded to `max_sequence_length` as before `trim_text_padding`.
        trim = KlingFoleyPipeline.trim_text_padding
        KlingFoleyPipeline.trim_text_padding = staticmethod(lambda *tensors: tensors)
        try:
            padded = time_pipeline(pipe, args, device)
        finally:
            KlingFoleyPipeline.trim_text_padding = trim
        result["padded_text"] = {
            "text_tokens": {"trimmed": result["pipeline"]["text_tokens"], "padded": padded["text_tokens"]},
            "flow_steps_s": {
                "trimmed": result["pipeline"]["stages"]["flow_steps"]["median_s"],
                "padded": padded["stages"]["flow_steps"]["median_s"],
            },
            "total_s": {"trimmed": result["pipeline"]["total_s"], "padded": padded["total_s"]},
        }
        result["padded_text"]["flow_steps_trimmed_over_padded"] = (
            result["padded_text"]["flow_steps_s"]["trimmed"] / result["padded_text"]["flow_steps_s"]["padded"]
        )

    # The pipeline vocodes (batch * channels) mels of 2 frames per latent frame in one call.
    samples = result["pipeline"]["audio"]["shape"][-1]
    mel_frames = -(-samples // 512)
    checks = [time_vocoder_batching(pipe.vocoder, mel_frames, args.repeats, device, dtype)]
    if args.bigvgan_seconds > 0:
        bigvgan = build_vocoder(bigvgan_v2_44khz_128band_512x_config()).eval().to(device=device, dtype=dtype)
        frames = round(args.bigvgan_seconds * 44100 / 512)
        checks.append(time_vocoder_batching(bigvgan, frames, args.repeats, device, dtype))
    result["vocoder_batching"] = checks

    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
