"""Speed and memory of FoleyMMDiTTransformer (not a test).

For one preset (default `small`) and one clip length (default 8 s: 345 audio tokens, 64 CLIP frames, 192
Synchformer tokens, 77 text tokens) it times, as the median of several runs after one warm-up:

- `forward_ms`: one full forward pass (condition projections included),
- `step_ms`: one denoising step with conditions prepared once (`prepare_conditions` + `forward(conditions=...)`,
  what the pipeline runs at every step),
- `prepare_conditions_ms`: the once-per-clip part,

for fp32, bf16 autocast (fp32 weights) and bf16 weights (`model.to(torch.bfloat16)`), at batch 1 and at the CFG
batch 2, plus the peak extra memory of a forward pass (CUDA: `torch.cuda.max_memory_allocated`; Linux CPU: the
peak resident set of a separate process per precision, reset through `/proc/self/clear_refs` after a warm-up). It
also counts the parameters of every preset on the meta device. Prints one JSON object.

    python benchmarks/bench_transformer.py [--preset small] [--duration 8] [--runs 3] [--device cpu] [--skip_memory]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import subprocess
import time

import torch

from foley_toolkit import FoleyMMDiTTransformer
from foley_toolkit.audio_utils import sequence_lengths


PRESETS = ["small", "kling-foley-1.5b", "kling-foley-3b", "kling-foley-6b"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=PRESETS, help="Model size to time.")
    parser.add_argument("--duration", type=float, default=8.0, help="Clip length in seconds.")
    parser.add_argument("--text_tokens", type=int, default=77, help="T5 tokens.")
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per case (median reported).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument("--skip_memory", action="store_true", help="Do not measure peak memory.")
    parser.add_argument("--_memory_only", default=None, help=argparse.SUPPRESS)  # internal: one memory sub-run
    return parser.parse_args()


def count_parameters() -> dict[str, int]:
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            model = FoleyMMDiTTransformer(**FoleyMMDiTTransformer.preset_config(name))
        counts[name] = sum(p.numel() for p in model.parameters())
    return counts


class PeakMemory:
    """Peak extra memory (MiB) of the code inside the `with` block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = None

    @staticmethod
    def _status_kib(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self._status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current resident set
            self.resettable = True
        except OSError:
            self.resettable = False
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        elif self.start is not None and self.resettable:
            self.peak_mib = (self._status_kib("VmHWM") - self.start) / 1024
        return False


def median_ms(fn, runs: int, device: torch.device) -> float:
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def build_model(preset: str, device: torch.device) -> FoleyMMDiTTransformer:
    torch.manual_seed(0)
    return FoleyMMDiTTransformer(**FoleyMMDiTTransformer.preset_config(preset)).to(device).eval()


def make_inputs(model, lengths: dict, text_tokens: int, batch_size: int, dtype, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    config = model.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    is_uncond = torch.arange(batch_size, device=device) > 0  # batched CFG: the second sample is unconditional
    return {
        "hidden_states": randn(batch_size, config.in_channels, lengths["audio_tokens"]),
        "timestep": torch.full((batch_size,), 500.0, device=device),
        "encoder_hidden_states": randn(batch_size, text_tokens, config.text_dim),
        "clip_features": randn(batch_size, lengths["clip_frames"], config.clip_dim),
        "sync_features": randn(batch_size, lengths["sync_tokens"], config.sync_dim),
        "drop_text": is_uncond,
        "drop_clip": is_uncond,
        "drop_sync": is_uncond,
    }


def precision_setup(model, precision: str, device: torch.device):
    """Casts the model for `precision`; returns (input dtype, autocast context)."""
    if precision == "bf16_weights":
        model.to(torch.bfloat16)
    dtype = torch.bfloat16 if precision == "bf16_weights" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16_autocast")
    return dtype, autocast


def measure_memory(args, device: torch.device, precision: str) -> dict[int, float | None]:
    """Peak extra memory (MiB) of one forward pass at batch 1 and 2, after a warm-up forward."""
    lengths = sequence_lengths(args.duration)
    model = build_model(args.preset, device)
    dtype, autocast = precision_setup(model, precision, device)
    peaks = {}
    for batch_size in (1, 2):
        inputs = make_inputs(model, lengths, args.text_tokens, batch_size, dtype, device)
        with torch.inference_mode(), autocast:
            model(**inputs)  # warm-up: one-time caches (oneDNN primitives, RoPE tables) are not activations
            memory = PeakMemory(device)
            with memory:
                model(**inputs)
        peaks[batch_size] = None if memory.peak_mib is None else round(memory.peak_mib, 1)
    return peaks


def memory_in_subprocess(args, precision: str) -> dict[int, float | None]:
    # CPU: a fresh process per precision with glibc told to return every large block to the OS on free, so that
    # the resident-set peak is the forward's own (the setting slows allocation, hence not used for timing).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--duration", str(args.duration),
               "--text_tokens", str(args.text_tokens), "--device", args.device, "--_memory_only", precision]
    if args.threads:
        command += ["--threads", str(args.threads)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return {int(k): v for k, v in json.loads(output.strip().splitlines()[-1]).items()}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args._memory_only:
        print(json.dumps(measure_memory(args, device, args._memory_only)))
        return

    lengths = sequence_lengths(args.duration)
    result = {
        "preset": args.preset,
        "duration_s": args.duration,
        "lengths": {**lengths, "text_tokens": args.text_tokens},
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "runs": args.runs,
        "parameters": count_parameters(),
    }

    model = build_model(args.preset, device)
    cases = []
    for precision in ("fp32", "bf16_autocast", "bf16_weights"):
        dtype, autocast = precision_setup(model, precision, device)
        if args.skip_memory:
            peaks = {1: None, 2: None}
        elif device.type == "cuda":
            peaks = measure_memory(args, device, precision)
        else:
            peaks = memory_in_subprocess(args, precision)
        for batch_size in (1, 2):
            inputs = make_inputs(model, lengths, args.text_tokens, batch_size, dtype, device)
            latents, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
            with torch.inference_mode(), autocast:
                model(latents, timestep, **inputs)  # warm-up
                forward_ms = median_ms(lambda: model(latents, timestep, **inputs), args.runs, device)
                prepare_ms = median_ms(
                    lambda: model.prepare_conditions(latents.shape[-1], **inputs), args.runs, device
                )
                conditions = model.prepare_conditions(latents.shape[-1], **inputs)
                step_ms = median_ms(lambda: model(latents, timestep, conditions=conditions), args.runs, device)
            cases.append(
                {
                    "precision": precision,
                    "batch_size": batch_size,
                    "forward_ms": forward_ms,
                    "step_ms": step_ms,
                    "prepare_conditions_ms": prepare_ms,
                    "peak_memory_mib": peaks[batch_size],
                }
            )
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    result["cases"] = cases
    # Batched CFG (cond + uncond in one batch-2 step) against two batch-1 steps.
    result["cfg_batch2_speedup_vs_two_batch1_steps"] = {
        c1["precision"]: round(2 * c1["step_ms"] / c2["step_ms"], 2) for c1, c2 in zip(cases[0::2], cases[1::2])
    }
    if hasattr(os, "getloadavg"):
        result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["note"] = (
        "median of `runs` after one warm-up; forward_ms = full forward, step_ms = forward with prepare_conditions "
        "cached (the per-step cost in the pipeline); peak_memory_mib = extra memory of one forward pass"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
