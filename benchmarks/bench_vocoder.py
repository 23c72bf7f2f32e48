"""BigVGAN-v2 vocoder speed: the fast path of `foley_toolkit.models.vocoder.MMAudioVocoder` against diffusers'
reference forward on the same weights (not a test).

Builds the full-size `bigvgan_v2_44khz_128band_512x` vocoder (122M parameters, random weights; BigVGAN's Snake
parameters are drawn around 0 so the activations are not all the identity), feeds it a `--seconds` log-mel for
`--channels` channels as one batch (the pipeline's stereo call), and times, per dtype, the reference forward
(`use_fast_path = False`) and the fast one (optionally also with `--chunk_frames`). The variants are interleaved
repeat by repeat, so their ratios hold on a loaded machine even where absolute seconds do not. It also reports the
largest difference of each fast output from the float32 reference output and the output level (a silent or
clipped output would make the comparison meaningless). Prints a table and one JSON object.

    OMP_NUM_THREADS=2 python benchmarks/bench_vocoder.py [--seconds 8] [--channels 2] [--dtypes fp32 bf16]
        [--repeats 1] [--threads 2] [--chunk_frames N] [--skip_reference] [--json_out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config, build_vocoder


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAMPLE_RATE, HOP = 44100, 512


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Clip length.")
    parser.add_argument("--channels", type=int, default=2, help="Channels vocoded as one batch (2 = stereo).")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=1, help="Timed calls per variant (median reported).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads.")
    parser.add_argument("--chunk_frames", type=int, default=None, help="Also time the fast path with this chunking.")
    parser.add_argument("--skip_reference", action="store_true", help="Time only the fast path(s).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_out", default=None, help="Also write the JSON object to this file.")
    return parser.parse_args()


def level(waveform: torch.Tensor) -> dict:
    """Peak and RMS in dBFS, DC offset and the fraction of clamped samples of a float waveform in [-1, 1]."""
    waveform = waveform.float()
    peak, rms = waveform.abs().max().item(), waveform.pow(2).mean().sqrt().item()
    return {
        "peak_dbfs": 20 * torch.log10(torch.tensor(max(peak, 1e-12))).item(),
        "rms_dbfs": 20 * torch.log10(torch.tensor(max(rms, 1e-12))).item(),
        "dc_offset": waveform.mean().item(),
        "clamped_fraction": (waveform.abs() >= 1.0).float().mean().item(),
    }


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocoder = build_vocoder(bigvgan_v2_44khz_128band_512x_config()).eval()
    with torch.no_grad():
        for name, parameter in vocoder.named_parameters():
            if name.endswith((".alpha", ".beta")):
                parameter.normal_(0.0, 0.5)  # log-scale Snake parameters, as trained ones spread around 0
    frames = round(args.seconds * SAMPLE_RATE / HOP)
    mel = torch.randn(args.channels, 128, frames) * 2.0 - 5.0  # log-mel values in the codec's range

    # (name, fast path, chunk_frames, compute_dtype); "fast" uses compute_dtype="auto" (float32 arithmetic for
    # bfloat16 weights on a CPU without AMX), "fast_bf16_compute" forces bfloat16 arithmetic.
    variants = [("reference", False, None, "auto")] if not args.skip_reference else []
    variants.append(("fast", True, None, "auto"))
    if "bf16" in args.dtypes:
        variants.append(("fast_bf16_compute", True, None, torch.bfloat16))
    if args.chunk_frames:
        variants.append((f"fast_chunk{args.chunk_frames}", True, args.chunk_frames, "auto"))

    results, reference_fp32 = {}, None
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        model = vocoder.to(dtype)
        dtype_variants = [v for v in variants if dtype_name == "bf16" or v[0] != "fast_bf16_compute"]
        times, outputs = {name: [] for name, *_ in dtype_variants}, {}
        with torch.no_grad():
            for name, fast, chunk, compute in dtype_variants:  # warm-up on a short mel (allocator, oneDNN)
                model.use_fast_path, model.chunk_frames, model.compute_dtype = fast, chunk, compute
                model(mel[..., :16].to(dtype))
            for _ in range(args.repeats):
                for name, fast, chunk, compute in dtype_variants:
                    model.use_fast_path, model.chunk_frames, model.compute_dtype = fast, chunk, compute
                    start = time.perf_counter()
                    outputs[name] = model(mel.to(dtype)).sample.float()
                    times[name].append(time.perf_counter() - start)
        if dtype_name == "fp32" and "reference" in outputs:
            reference_fp32 = outputs["reference"]
        entry = {}
        for name, _, _, compute in dtype_variants:
            model.compute_dtype = compute  # so that `resolved_compute_dtype` names this variant's arithmetic
            seconds = statistics.median(times[name])
            entry[name] = {
                "seconds": seconds,
                "times": times[name],
                "real_time_factor": args.seconds / seconds,
                "level": level(outputs[name]),
                "compute_dtype": str(
                    model.resolved_compute_dtype() if name != "reference" else model.conv_pre.weight.dtype
                ).replace("torch.", ""),
            }
            if reference_fp32 is not None:
                entry[name]["max_abs_diff_vs_fp32_reference"] = (outputs[name] - reference_fp32).abs().max().item()
        if "reference" in entry:
            for name in entry:
                entry[name]["speedup_vs_reference"] = entry["reference"]["seconds"] / entry[name]["seconds"]
        results[dtype_name] = entry

    result = {
        "seconds_of_audio": args.seconds,
        "mel_frames": frames,
        "channels": args.channels,
        "config": "bigvgan_v2_44khz_128band_512x",
        "parameters": sum(p.numel() for p in vocoder.parameters()),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_after": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "amx_tiles": torch.cpu._is_amx_tile_supported(),
        "results": results,
    }
    print(f"{'dtype':6} {'variant':18} {'compute':>15} {'seconds':>9} {'x real time':>12} {'speedup':>8} "
          f"{'max|d| fp32 ref':>16} {'peak dBFS':>10}")  # fmt: skip
    for dtype_name, entry in results.items():
        for name, row in entry.items():
            print(
                f"{dtype_name:6} {name:18} {row['compute_dtype']:>15} {row['seconds']:9.2f} "
                f"{row['real_time_factor']:12.3f} "
                f"{row.get('speedup_vs_reference', float('nan')):8.2f} "
                f"{row.get('max_abs_diff_vs_fp32_reference', float('nan')):16.2e} {row['level']['peak_dbfs']:10.1f}"
            )
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
