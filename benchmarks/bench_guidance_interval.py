"""Guidance in a limited interval of noise levels: time saved and what it does to sync and level (not a test).

Renders `--clips` synthetic clips with known event times (`foley_toolkit.synthetic.generate_dataset`, the `classic`
look the demo was trained on, a seed it was not trained on), generates each clip's sound from its video with every
`--intervals` setting (`pipe(..., guidance_interval=...)`; `none` guides every step), and scores each setting with
the library behind `foley-toolkit eval-sync`: onset F1 against the true events, the output's loudness and its
per-event loudness error against the true track, peak dBFS and DC offset. Also: generation seconds and transformer
calls at batch 2 (guided steps) per clip. The same seed and noise serve every setting, so only the guidance differs.

    OMP_NUM_THREADS=2 python benchmarks/bench_guidance_interval.py [--pipeline checkpoints/kling-foley-demo]
        [--clips 24] [--steps 20] [--guidance 4.5] [--intervals "none;0,0.8;0.2,1;0.2,0.8"] [--workdir DIR]
        [--json_out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.audio_utils import save_audio
from foley_toolkit.evaluation.sync_metrics import evaluate_sync_folder
from foley_toolkit.synthetic import generate_dataset


def parse_intervals(text: str) -> list[tuple[float, float] | None]:
    intervals = []
    for item in text.split(";"):
        item = item.strip()
        intervals.append(None if item == "none" else tuple(float(x) for x in item.split(",")))
    return intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="checkpoints/kling-foley-demo")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seed", type=int, default=2, help="synthetic-set seed (the demo trained on seed 1)")
    parser.add_argument("--looks", default="classic")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--intervals", default="none;0,0.8;0.2,1;0.2,0.8", help="';'-separated 'low,high' or 'none'")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_guidance_interval_"))
    data = workdir / "clips"
    if not (data / "metadata.jsonl").is_file():
        generate_dataset(data, num_clips=args.clips, seed=args.seed, looks=args.looks)
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    pipe = KlingFoleyPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    batches: list[int] = []
    pipe.transformer.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))

    results = []
    for interval in parse_intervals(args.intervals):
        name = "none" if interval is None else f"{interval[0]:g}-{interval[1]:g}"
        out_dir = workdir / f"audio_{name}"
        out_dir.mkdir(parents=True, exist_ok=True)
        batches.clear()
        seconds = audio_seconds = 0.0
        for record in records:
            start = time.perf_counter()
            output = pipe(
                video=str(data / record["file_name"]),
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                guidance_interval=interval,
                generator=torch.Generator().manual_seed(0),
            )
            seconds += time.perf_counter() - start
            audio_seconds += output.audios.shape[-1] / output.sample_rate
            save_audio(out_dir / (Path(record["file_name"]).stem + ".wav"), output.audios[0], output.sample_rate)
        report = evaluate_sync_folder(out_dir, data / "metadata.jsonl").to_dict()
        row = {
            "interval": interval,
            "seconds_per_audio_second": seconds / audio_seconds,
            "guided_calls_per_clip": sum(b == 2 for b in batches) / len(records),
            "calls_per_clip": len(batches) / len(records),
            "report": report,
        }
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "report"} | {"f1": report.get("f1")}), flush=True)

    keys = ("f1", "precision", "recall", "shuffled_f1", "loudness_lufs", "loudness_error_db", "peak_dbfs", "dc_offset")
    print(f"{'interval':<10}{'s / audio s':>12}{'guided':>8}" + "".join(f"{k:>18}" for k in keys))
    for row in results:
        name = "none" if row["interval"] is None else "{:g}-{:g}".format(*row["interval"])
        values = "".join(
            f"{row['report'].get(k):>18.3f}" if isinstance(row["report"].get(k), (int, float)) else f"{'n/a':>18}"
            for k in keys
        )
        print(f"{name:<10}{row['seconds_per_audio_second']:>12.3f}{row['guided_calls_per_clip']:>8.1f}{values}")
    summary = {"pipeline": args.pipeline, "clips": len(records), "steps": args.steps, "guidance": args.guidance,
               "threads": torch.get_num_threads(), "results": results}  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
