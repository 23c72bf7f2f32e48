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

FLOPs (`--flops`): one more call, untimed, under `torch.utils.flop_counter.FlopCounterMode`, charged to the same
stages by the same hooks (the counter's running total read at each stage boundary). The counter counts matmuls,
convolutions and attention (elementwise work is not counted); CPU attention
(`aten._scaled_dot_product_flash_attention_for_cpu`, which the counter has no formula for) is added with the
counter's own SDPA formula, `4 * batch * heads * queries * keys * head_dim`. The same run measures the matmul
ceiling of the machine (best of several large plain `a @ b` in fp32 and bf16, before and after the timed calls)
and reports, per stage, the achieved GFLOP/s and its fraction of the ceiling of the run's dtype.
`--flow_flops_preset small` also counts and times one denoising step of a full-size transformer preset (random
weights, 8 s clip, batched CFG batch 2) with a
`--prompt_tokens`-token prompt padded to 128 T5 tokens (mask kept) against the text trimmed to the prompt (the path
of `KlingFoleyPipeline.trim_text_padding`), both projecting every audio token's adaLN modulation, and the trimmed
text with the adaLN projections once per distinct row (`FoleyMMDiTTransformer.deduplicate_modulation`) and one audio
input projection for the two equal latent halves of the CFG batch (`deduplicate_latents`), both the default; the three
are timed interleaved, repeat by repeat.
`--vision_encoders metaclip-bigg-14,clip-vit-b-16` times full-size `CLIPVisionModelWithProjection`s (random weights)
per frame: FLOPs, seconds and the 64 CLIP frames of an 8 s clip.

    python benchmarks/bench_pipeline.py [--pipeline checkpoints/kling-foley-demo] [--video examples/assets/demo.mp4]
        [--dtype fp32|bf16] [--repeats 3] [--steps 20] [--threads N] [--bigvgan_seconds 1.0] [--compare_padded_text]
        [--flops] [--flow_flops_preset small] [--prompt_tokens 12] [--vision_encoders NAMES] [--vision_frames 2]
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
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

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
    parser.add_argument(
        "--flops", action="store_true", help="Count FLOPs per stage and measure the fp32 / bf16 matmul ceiling."
    )
    parser.add_argument(
        "--flow_flops_preset",
        default=None,
        help="Also count and time one CFG step of this full-size transformer preset, padded vs trimmed text.",
    )
    parser.add_argument("--prompt_tokens", type=int, default=12, help="Real T5 tokens for --flow_flops_preset.")
    parser.add_argument("--flow_seconds", type=float, default=8.0, help="Clip length for --flow_flops_preset.")
    parser.add_argument(
        "--vision_encoders",
        default=None,
        help=f"Comma-separated full-size vision encoders to time per frame (random weights): {sorted(VISION_ENCODERS)}.",
    )
    parser.add_argument(
        "--vision_frames", type=int, default=2, help="Frames per vision-encoder call (--vision_encoders)."
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
    if not 1 <= args.prompt_tokens <= 128:
        parser.error("--prompt_tokens must be between 1 and 128 (the T5 padding length).")
    if args.vision_encoders:
        unknown = set(args.vision_encoders.split(",")) - set(VISION_ENCODERS)
        if unknown:
            parser.error(f"--vision_encoders: unknown {sorted(unknown)}, expected some of {sorted(VISION_ENCODERS)}.")
    if args.vision_frames < 1:
        parser.error("--vision_frames must be >= 1.")
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


def call_kwargs(args) -> dict:
    return {
        "video": args.video,
        "prompt": args.prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "duration": args.duration,
        "output_type": "pt",
    }


def time_pipeline(pipe: KlingFoleyPipeline, args, device: torch.device) -> dict:
    timer = StageTimer(device)
    instrument(pipe, timer)
    kwargs = call_kwargs(args)
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


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu`: the counter's formula for the other SDPA ops."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts CPU attention."""
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    )


class StageFlops(StageTimer):
    """`StageTimer` whose clock is a `FlopCounterMode`'s running total: the same hooks charge FLOPs to the stages."""

    def __init__(self, counter: FlopCounterMode):
        super().__init__(torch.device("cpu"))
        self.counter = counter

    def _now(self) -> float:
        return float(self.counter.get_total_flops())


@torch.inference_mode()
def count_pipeline_flops(pipe: KlingFoleyPipeline, args) -> dict:
    """FLOPs per stage of one (untimed) pipeline call, and the total."""
    counter = flop_counter()
    stages = StageFlops(counter)
    instrument(pipe, stages)
    try:
        with counter:
            pipe(generator=torch.Generator().manual_seed(0), **call_kwargs(args))
    finally:
        stages.remove()
    total = counter.get_total_flops()
    flops = {name: stages.seconds.get(name, 0.0) for name in STAGES}
    flops["other"] = total - sum(flops.values())
    return {"stages": flops, "total": total}


@torch.inference_mode()
def matmul_ceiling(device: torch.device, size: int = 3072, repeats: int = 8) -> dict[str, float]:
    """Best GFLOP/s of a plain `size`-square matmul per dtype (the ceiling the stages are compared with)."""
    ceilings = {}
    for name, dtype in DTYPES.items():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(repeats + 1):  # the first is the warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        ceilings[name] = 2 * size**3 / best / 1e9
    return ceilings


def achieved(flops: float, seconds: float, ceiling_gflops: float) -> dict:
    gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
    return {"gflop": flops / 1e9, "gflop_per_s": gflops, "fraction_of_ceiling": gflops / ceiling_gflops}


def _clip_vit_b_16_config():
    from foley_toolkit.models.encoders.presets import clip_vit_b_16_config

    return clip_vit_b_16_config()


def _metaclip_bigg_config():
    from foley_toolkit.models.encoders.presets import metaclip_bigg_14_quickgelu_config

    return metaclip_bigg_14_quickgelu_config()


VISION_ENCODERS = {"metaclip-bigg-14": _metaclip_bigg_config, "clip-vit-b-16": _clip_vit_b_16_config}


@torch.inference_mode()
def vision_encoder_cost(args, device: torch.device, dtype: torch.dtype, ceiling_gflops: float) -> dict:
    """Per-frame cost of full-size `CLIPVisionModelWithProjection`s (random weights) at `--vision_frames` frames per
    call: FLOPs per frame (one counted call), seconds per frame (median of `--repeats` calls after a warm-up), the
    matmul ceiling fraction and the 8 s clip's 64 CLIP frames extrapolated."""
    from foley_toolkit.models.encoders.presets import build_vision_encoder

    result = {}
    for name in args.vision_encoders.split(","):
        config = VISION_ENCODERS[name]()
        model = build_vision_encoder(config, device=device, dtype=dtype)
        size = config.image_size
        pixels = torch.randn(args.vision_frames, 3, size, size, generator=torch.Generator().manual_seed(0))
        pixels = pixels.to(device=device, dtype=dtype)
        counter = flop_counter()
        with counter:
            model(pixel_values=pixels[:1])
        times = []
        for _ in range(max(args.repeats, 1) + 1):  # the first call is the warm-up
            start = time.perf_counter()
            model(pixel_values=pixels)
            times.append(time.perf_counter() - start)
        per_frame = statistics.median(times[1:]) / args.vision_frames
        result[name] = {
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "projection_dim": config.projection_dim,
            "frames_per_call": args.vision_frames,
            "seconds_per_frame": per_frame,
            "times": times[1:],
            "seconds_for_64_frames": 64 * per_frame,
        }
        result[name].update(achieved(counter.get_total_flops(), min(times[1:]) / args.vision_frames, ceiling_gflops))
        del model
    return result


@torch.inference_mode()
def flow_step_flops(args, device: torch.device, dtype: torch.dtype, ceiling_gflops: float) -> dict:
    """One batched-CFG denoising step of a full-size preset with a `prompt_tokens` prompt: text padded to 128 T5
    tokens (mask kept) vs trimmed to the prompt, both projecting every token's adaLN modulation; then trimmed with
    the adaLN projections once per distinct row (`deduplicate_modulation`) and the audio input projection once for the
    two equal halves of the CFG batch (`deduplicate_latents`), both the default. FLOPs, median step time and
    fraction of the matmul ceiling."""
    from bench_transformer import build_model, make_inputs  # same folder: the transformer benchmark's inputs

    from foley_toolkit.audio_utils import sequence_lengths

    model = build_model(args.flow_flops_preset, device).to(dtype)
    lengths = sequence_lengths(args.flow_seconds)
    result = {"preset": args.flow_flops_preset, "seconds": args.flow_seconds, "batch": 2, "lengths": lengths}
    variants = (
        ("padded", 128, False),
        ("trimmed", args.prompt_tokens, False),
        ("trimmed_dedup", args.prompt_tokens, True),
    )
    outputs, calls = {}, {}
    for name, text_tokens, deduplicate in variants:
        inputs = make_inputs(model, lengths, text_tokens, 2, dtype, device)  # sample 1 is the unconditional one
        latents, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
        latents = latents[:1].repeat(2, 1, 1)  # batched CFG: the pipeline passes torch.cat([latents] * 2)
        mask = torch.zeros(2, text_tokens, dtype=torch.bool, device=device)
        mask[:, : args.prompt_tokens] = True
        model.deduplicate_modulation = deduplicate  # read by prepare_conditions
        model.deduplicate_latents = deduplicate  # read by forward: one input projection for the two equal halves
        conditions = model.prepare_conditions(latents.shape[-1], encoder_attention_mask=mask, **inputs)
        calls[name] = partial(model, latents, timestep, conditions=conditions)
        outputs[name] = calls[name]().sample  # also the warm-up
        counter = flop_counter()
        with counter:
            calls[name]()
        result[name] = {"text_tokens": text_tokens, "deduplicate_modulation": deduplicate, "times": []}
        result[name]["flops"] = counter.get_total_flops()
        if deduplicate:
            result[name]["adaln_rows"] = {
                "distinct": conditions.sync_adaln_rows.shape[0],
                "tokens": 2 * lengths["audio_tokens"],
            }
    # Variants interleaved repeat by repeat, so that a slow burst on a shared machine hits them alike.
    for _ in range(max(args.repeats, 1)):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            result[name]["times"].append(time.perf_counter() - start)
    for name in calls:
        times = result[name]["times"]
        result[name]["step_s"] = statistics.median(times)
        # The ceiling is a best-of time, so the step's fraction of it is taken from its best time too.
        result[name].update(achieved(result[name].pop("flops"), min(times), ceiling_gflops))
    model.deduplicate_modulation = model.deduplicate_latents = True
    result["flop_reduction"] = 1 - result["trimmed"]["gflop"] / result["padded"]["gflop"]
    result["time_ratio_trimmed_over_padded"] = result["trimmed"]["step_s"] / result["padded"]["step_s"]
    result["dedup_flop_reduction"] = 1 - result["trimmed_dedup"]["gflop"] / result["trimmed"]["gflop"]
    result["dedup_time_ratio"] = result["trimmed_dedup"]["step_s"] / result["trimmed"]["step_s"]
    result["dedup_best_time_ratio"] = min(result["trimmed_dedup"]["times"]) / min(result["trimmed"]["times"])
    result["flop_reduction_vs_padded"] = 1 - result["trimmed_dedup"]["gflop"] / result["padded"]["gflop"]
    result["dedup_output_equal"] = bool(torch.equal(outputs["trimmed_dedup"], outputs["trimmed"]))
    return result


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
        "fast_path": getattr(vocoder, "use_fast_path", None),
        "parameters": sum(p.numel() for p in vocoder.parameters()),
        "mel_frames": mel_frames,
        "batch2_s": batch2,
        "two_batch1_s": two_batch1,
        "batch2_over_two_batch1": batch2 / two_batch1,
        "batch2_over_one_channel": batch2 / one_channel,
    }


def print_table(result: dict) -> None:
    print(f"\n{'stage':<18}{'seconds':>10}{'share':>9}{'calls':>7}{'GFLOP':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for name, stage in result["pipeline"]["stages"].items():
        calls = "" if stage["calls"] is None else str(stage["calls"])
        flops = ""
        if "gflop" in stage:
            flops = f"{stage['gflop']:>10.2f}{stage['gflop_per_s']:>10.1f}{100 * stage['fraction_of_ceiling']:>8.1f}%"
        print(f"{name:<18}{stage['median_s']:>10.3f}{100 * stage['share']:>8.1f}%{calls:>7}{flops}")
    print(f"{'total':<18}{result['pipeline']['total_s']:>10.3f}{100.0:>8.1f}%")
    if "matmul_ceiling_gflop_per_s" in result:
        ceilings = result["matmul_ceiling_gflop_per_s"]
        print(f"matmul ceiling (this run): fp32 {ceilings['fp32']:.1f} GFLOP/s, bf16 {ceilings['bf16']:.1f} GFLOP/s")
    if "flow_step_text_padding" in result:
        flow = result["flow_step_text_padding"]
        for name in ("padded", "trimmed", "trimmed_dedup"):
            row = flow[name]
            adaln = (
                "distinct-row adaLN, one input projection for the CFG pair"
                if row["deduplicate_modulation"]
                else "per-token adaLN"
            )
            print(
                f"flow step {flow['preset']} b2, {row['text_tokens']:>3} text tokens, {adaln}: {row['gflop']:.1f} GFLOP, "
                f"{row['step_s']:.3f} s (median), {100 * row['fraction_of_ceiling']:.1f}% of the {result['dtype']} "
                "ceiling (best time)"
            )
        print(
            f"trimmed text: {100 * flow['flop_reduction']:.1f}% fewer FLOPs per step, "
            f"time x{flow['time_ratio_trimmed_over_padded']:.2f}; distinct-row adaLN "
            f"({flow['trimmed_dedup']['adaln_rows']['distinct']} of {flow['trimmed_dedup']['adaln_rows']['tokens']} "
            f"rows): {100 * flow['dedup_flop_reduction']:.1f}% fewer, time x{flow['dedup_time_ratio']:.2f} (median) / "
            f"x{flow['dedup_best_time_ratio']:.2f} (best), output "
            f"{'equal' if flow['dedup_output_equal'] else 'NOT equal'}; both vs padded: "
            f"{100 * flow['flop_reduction_vs_padded']:.1f}% fewer FLOPs"
        )
    for name, row in result.get("vision_encoders", {}).items():
        print(
            f"vision encoder {name} ({row['parameters_m']:.0f}M, projection {row['projection_dim']}): "
            f"{row['gflop']:.1f} GFLOP / frame, {row['seconds_per_frame']:.3f} s / frame (median, "
            f"{row['frames_per_call']} frames per call), {100 * row['fraction_of_ceiling']:.1f}% of the "
            f"{result['dtype']} ceiling; 64 frames (8 s at 8 fps): {row['seconds_for_64_frames']:.1f} s"
        )
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
    measure_ceiling = args.flops or args.flow_flops_preset or args.vision_encoders
    ceilings_before = matmul_ceiling(device) if measure_ceiling else {}
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

    if measure_ceiling:
        # Measured before and after the pipeline timing and the best kept: on a shared machine one burst can be slow.
        result["matmul_ceiling_gflop_per_s"] = {
            name: max(before, after)
            for (name, before), after in zip(ceilings_before.items(), matmul_ceiling(device).values())
        }
    ceiling = result.get("matmul_ceiling_gflop_per_s", {}).get(args.dtype)
    if args.flops:
        flops = count_pipeline_flops(pipe, args)
        for name, stage in result["pipeline"]["stages"].items():
            stage.update(achieved(flops["stages"][name], stage["median_s"], ceiling))
        result["pipeline"]["total_gflop"] = flops["total"] / 1e9
    if args.flow_flops_preset:
        result["flow_step_text_padding"] = flow_step_flops(args, device, dtype, ceiling)
    if args.vision_encoders:
        result["vision_encoders"] = vision_encoder_cost(args, device, dtype, ceiling)

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
