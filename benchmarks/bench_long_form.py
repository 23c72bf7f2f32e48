"""Long-form generation: time and peak memory against video length, and what the window joins do to the sound
(not a test).

For each length in `--lengths` it renders a synthetic `classic`-look video (96x96, 25 fps) whose events fall both
right at the window joins and away from them, then runs `foley-toolkit generate --video ... --out out.wav` in a
fresh Python process (the CLI streams the audio to disk as it is produced) and records:

- `seconds`: wall time of the generation (the CLI's own "generated in" figure: video decoding, encoders, flow steps,
  decoding, vocoding and writing; not the model loading), `seconds_per_video_second` and its ratio to the shortest
  length's figure;
- `peak_rss_mb`: the child process's peak resident memory (`ru_maxrss`, model loading included);
- the output's level: peak dBFS, DC offset, integrated loudness (pyloudnorm), and its length against the video's.

Seams, over every output longer than one window: onset F1 (`foley_toolkit.evaluation.sync_metrics`, 80 ms
tolerance) of events within `--near_seconds` of a join (the middle of a cross-fade) against events farther away,
and the loudness step at each join (short-term loudness, 3 s EBU R128 window, of `--step_seconds` on each side)
against the same measure at control points halfway between joins. It writes a spectrogram PNG of 8 s around the
first join of the longest clip.

    OMP_NUM_THREADS=1 python benchmarks/bench_long_form.py [--model checkpoints/kling-foley-demo]
        [--lengths 10,30,60,120,300] [--steps 20] [--window_seconds auto] [--workdir DIR] [--json_out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_clip(path: str, duration: float, seed: int, period: float = 0.8) -> list[dict]:
    """A synthetic `classic`-look clip of `duration` s with events on a jittered `period` grid (steady density, so
    the short-term loudness is about the same everywhere and a step at a join stands out; every join has events
    within a second of it); writes `path` (mp4) and returns the events."""
    from foley_toolkit.synthetic import (
        EVENT_CLASSES,
        MAX_ABS_X,
        MIN_ABS_X_MOVING,
        SyntheticClip,
        SyntheticEvent,
        render_audio,
        render_video,
        write_clip,
    )

    fps, sample_rate = 25, 44_100
    rng = np.random.default_rng(seed)
    grid = np.arange(0.5, duration - 0.6, period)
    times = grid + rng.uniform(-0.1, 0.1, size=len(grid))
    names = list(EVENT_CLASSES)
    events, last = [], {}
    for time_ in times:
        frame = int(round(time_ * fps))
        time_ = frame / fps
        if events and time_ - events[-1].time < 0.5:
            continue
        for name in rng.permutation(names):
            if time_ - last.get(name, -1e9) >= EVENT_CLASSES[name].min_same_class_gap:
                break
        else:
            continue
        moving = EVENT_CLASSES[name].moving
        x = float(rng.choice([-1.0, 1.0]) * rng.uniform(MIN_ABS_X_MOVING, MAX_ABS_X)) if moving else float(
            rng.uniform(-MAX_ABS_X, MAX_ABS_X)
        )
        events.append(SyntheticEvent(float(time_), str(name), x, moving, frame))
        last[name] = time_
    num_frames = int(round(duration * fps))
    audio = render_audio(events, int(round(num_frames / fps * sample_rate)), rng, sample_rate)
    frames = render_video(events, num_frames, fps)
    clip = SyntheticClip(frames, audio, float(fps), sample_rate, num_frames / fps, events, "", seed)
    write_clip(clip, path)
    return [event.to_dict() for event in events]


def reference_audio(events: list[dict], num_samples: int, sample_rate: int) -> np.ndarray:
    """The synthetic sound of `events` (the same event sounds; gains drawn again)."""
    from foley_toolkit.synthetic import SyntheticEvent, render_audio

    objects = [SyntheticEvent(e["time"], e["class"], e["x"], e["moving"], e["frame"]) for e in events]
    return render_audio(objects, num_samples, np.random.default_rng(0), sample_rate)


def run_child(args) -> None:
    """Child process: one `foley-toolkit generate` call; prints a JSON line with its time and peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    from foley_toolkit.cli import main

    argv = ["generate", "--model", args.model, "--video", args.child[0], "--out", args.child[1], "--steps",
            str(args.steps), "--seed", "0"]  # fmt: skip
    if args.window_seconds != "auto":
        argv += ["--window-seconds", args.window_seconds]
    captured = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        code = main(argv)
    wall = time.perf_counter() - start
    match = re.search(r"generated in ([0-9.]+) s", captured.getvalue())
    print(json.dumps({
        "code": code,
        "seconds": float(match.group(1)) if match else None,
        "wall_seconds_with_loading": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stdout": captured.getvalue().strip(),
    }))  # fmt: skip


def level(audio: np.ndarray, sample_rate: int) -> dict:
    import pyloudnorm

    peak = float(np.abs(audio).max())
    return {
        "peak_dbfs": 20 * np.log10(max(peak, 1e-12)),
        "dc_offset": float(np.abs(audio.mean(axis=1)).max()),
        "integrated_lufs": float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T)),
    }


def short_term_loudness(audio: np.ndarray, sample_rate: int, start: float, end: float) -> float:
    """Loudness (LUFS, K-weighted, ungated) of `audio[:, start:end]`."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate, block_size=min(0.4, end - start))
    segment = audio[:, int(start * sample_rate) : int(end * sample_rate)].T
    # pyloudnorm gates blocks below -70 LUFS; an all-silent side reads -inf, reported as -70.
    value = meter.integrated_loudness(segment)
    return max(float(value), -70.0)


def seam_scores(audio, sample_rate, events, joins, near_seconds, step_seconds) -> dict:
    from foley_toolkit.evaluation.sync_metrics import detect_onsets, onset_scores

    from foley_toolkit.evaluation.sync_metrics import match_onsets

    onsets = detect_onsets(audio, sample_rate)
    joins = np.asarray(joins)

    def near(t):
        return np.abs(joins - t).min() <= near_seconds

    times = [e["time"] for e in events]
    ref_near = [t for t in times if near(t)]
    ref_far = [t for t in times if not near(t)]
    est_near = [t for t in onsets if near(t)]
    est_far = [t for t in onsets if not near(t)]
    duration = audio.shape[1] / sample_rate

    def steps(points):
        out = []
        for p in points:
            if p - step_seconds < 0 or p + step_seconds > duration:
                continue
            before = short_term_loudness(audio, sample_rate, p - step_seconds, p)
            after = short_term_loudness(audio, sample_rate, p, p + step_seconds)
            out.append(abs(after - before))
        return out

    controls = (joins[:-1] + joins[1:]) / 2 if len(joins) > 1 else []
    join_steps, control_steps = steps(joins), steps(controls)
    return {
        # Counts for F1 pooled over clips: (matched, reference events, detected onsets).
        "counts_near": [len(match_onsets(ref_near, est_near)), len(ref_near), len(est_near)],
        "counts_away": [len(match_onsets(ref_far, est_far)), len(ref_far), len(est_far)],
        "num_joins": len(joins),
        "events_near_joins": len(ref_near),
        "events_away": len(ref_far),
        "f1_near_joins": onset_scores(ref_near, est_near)["f1"],
        "f1_away": onset_scores(ref_far, est_far)["f1"],
        "loudness_step_db_at_joins": {"median": float(np.median(join_steps)), "max": float(np.max(join_steps))},
        "loudness_step_db_at_controls": (
            {"median": float(np.median(control_steps)), "max": float(np.max(control_steps))} if control_steps else None
        ),
    }


def pooled_f1(records: list[dict], group: str) -> float:
    matched, references, detected = (sum(r["seams"][f"counts_{group}"][i] for r in records) for i in range(3))
    precision, recall = matched / max(detected, 1), matched / max(references, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def run_length(args, length: float, window: str, video: str, out: str) -> dict:
    """One `foley-toolkit generate` in a fresh process; its JSON record."""
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", video, out, "--model", args.model, "--steps",
         str(args.steps), "--window_seconds", window, "--threads", str(args.threads)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
    )  # fmt: skip
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode or not lines:
        raise RuntimeError(f"{length} s: the child failed:\n{child.stdout}\n{child.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/kling-foley-demo")
    parser.add_argument("--lengths", default="10,30,60,120,300", help="video lengths in seconds, comma-separated")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--window_seconds", default="auto", help="'auto' (the pipeline default) or seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--one_pass_lengths", default="", help="lengths (of --lengths) also generated in one pass, for comparison"
    )
    parser.add_argument("--near_seconds", type=float, default=1.0, help="events this close to a join are 'near'")
    parser.add_argument("--step_seconds", type=float, default=3.0, help="loudness window on each side of a point")
    parser.add_argument("--workdir", default=None, help="keep videos, audio and the PNG here (default: temp)")
    parser.add_argument("--json_out", default=None)
    parser.add_argument("--prepare_only", action="store_true", help="only render the videos into --workdir")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    import soundfile as sf

    from foley_toolkit import KlingFoleyPipeline
    from foley_toolkit.pipelines.kling_foley.long_form import plan_for_duration
    from foley_toolkit.plotting import save_spectrogram

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_long_form_")
    os.makedirs(workdir, exist_ok=True)
    pipe = KlingFoleyPipeline.from_pretrained(args.model)
    window = pipe._resolve_window_seconds("auto" if args.window_seconds == "auto" else float(args.window_seconds))
    seconds_per_frame = pipe.vae.samples_per_latent_frame / pipe.sample_rate
    one_pass_lengths = {float(x) for x in args.one_pass_lengths.split(",") if x}
    results = []
    for index, length in enumerate(float(x) for x in args.lengths.split(",")):
        plan = plan_for_duration(pipe, length, window)
        joins = [sum(plan.crossfade(k)) / 2 * seconds_per_frame for k in range(1, plan.num_windows)]
        video = os.path.join(workdir, f"clip_{length:g}s.mp4")
        out = os.path.join(workdir, f"clip_{length:g}s.wav")
        events_file = video + ".events.json"
        if os.path.isfile(video) and os.path.isfile(events_file):  # rendered by an earlier run in this --workdir
            with open(events_file) as f:
                events = json.load(f)
        else:
            events = make_clip(video, length, seed=index)
            with open(events_file, "w") as f:
                json.dump(events, f)
        if args.prepare_only:
            continue
        child = run_length(args, length, args.window_seconds, video, out)
        record = {"video_seconds": length, "windows": plan.num_windows, "events": len(events), **child}
        audio, rate = sf.read(out, dtype="float32", always_2d=True)
        audio = audio.T
        record["audio_seconds"] = audio.shape[1] / rate
        record["level"] = level(audio, rate)
        if plan.num_windows > 1:
            record["seams"] = seam_scores(audio, rate, events, joins, args.near_seconds, args.step_seconds)
            # The same measures on the clip's own sound (rendered again from its events): how large the steps of
            # this content are anyway, at the same points.
            reference = reference_audio(events, audio.shape[1], rate)
            record["seams_of_the_reference_sound"] = seam_scores(
                reference, rate, events, joins, args.near_seconds, args.step_seconds
            )
            record["joins_seconds"] = [round(j, 3) for j in joins]
            if index == len(args.lengths.split(",")) - 1 or length == max(float(x) for x in args.lengths.split(",")):
                centre = joins[0]
                png = os.path.join(workdir, f"spectrogram_join_{length:g}s.png")
                excerpt = audio[:, int((centre - 4) * rate) : int((centre + 4) * rate)]
                save_spectrogram(excerpt, png, rate, title=f"{length:g} s clip, {centre - 4:.2f}-{centre + 4:.2f} s "
                                 f"(join at the centre)")  # fmt: skip
                record["spectrogram_png"] = png
        if length in one_pass_lengths:
            # The same clip in one pass (window_seconds=None), scored at the same join points.
            one_pass_out = os.path.join(workdir, f"clip_{length:g}s_one_pass.wav")
            one_pass = run_length(args, length, "none", video, one_pass_out)
            one_pass_audio = sf.read(one_pass_out, dtype="float32", always_2d=True)[0].T
            record["one_pass"] = {
                "seconds": one_pass["seconds"],
                "peak_rss_mb": one_pass["peak_rss_mb"],
                "level": level(one_pass_audio, rate),
                "seams": seam_scores(one_pass_audio, rate, events, joins, args.near_seconds, args.step_seconds),
            }
        results.append(record)
        print(json.dumps(record), flush=True)

    if args.prepare_only:
        return
    base = results[0]["seconds"] / results[0]["video_seconds"]
    for record in results:
        record["seconds_per_video_second"] = record["seconds"] / record["video_seconds"]
        record["ratio_to_first"] = record["seconds_per_video_second"] / base
    summary = {
        "model": args.model,
        "steps": args.steps,
        "window_seconds": window,
        "threads": args.threads,
        "workdir": workdir,
        "results": results,
    }
    windowed = [r for r in results if "seams" in r]
    if windowed:
        summary["pooled_f1_near_joins"] = pooled_f1(windowed, "near")
        summary["pooled_f1_away"] = pooled_f1(windowed, "away")
    rss = {r["video_seconds"]: r["peak_rss_mb"] for r in results}
    if 60.0 in rss and 300.0 in rss:
        summary["peak_rss_growth_60_to_300_mb"] = rss[300.0] - rss[60.0]
    print(json.dumps(summary, indent=1))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
