"""Long-form generation: time and peak memory against video length, and what the window joins do to the sound
(not a test).

For each length in `--lengths` and each clip kind in `--clips` it renders a synthetic `classic`-look video (96x96,
25 fps, its true sound as the mp4's AAC track) and runs `foley-toolkit generate --video ... --out out.wav` in a fresh
Python process (the CLI streams the audio to disk as it is produced). Two kinds of clip:

- `events`: events on a jittered 0.8 s grid with random classes, positions and gains; events fall both right at the
  window joins and away from them, and the sound's own 3 s loudness moves by a few dB from place to place;
- `steady`: a fixed 3 s cycle of 8 events at one gain, so every 3 s stretch holds the same sounds and the true
  track's short-term loudness is flat (its steps are a few tenths of a dB): the absolute 1.5 dB criterion is
  meaningful only there.

It records:

- `seconds`: wall time of the generation (the CLI's own "generated in" figure: video decoding, encoders, flow steps,
  decoding, vocoding and writing; not the model loading), `seconds_per_video_second` and its ratio to the shortest
  length's figure;
- `peak_rss_mb`: the child process's peak resident memory (`VmHWM`, model loading included; see `peak_rss_mb`);
- the output's level and the true track's: peak dBFS, DC offset, integrated loudness (pyloudnorm), and the output's
  length against the video's.

Seams, over every output longer than one window: onset F1 (`foley_toolkit.evaluation.sync_metrics`, 80 ms
tolerance) of events within `--near_seconds` of a join (the middle of a cross-fade) against events farther away,
with a 95% block-bootstrap interval of their difference (blocks: each join and the time around it), and the
loudness step at each join (short-term loudness, 3 s EBU R128 window, of `--step_seconds` on each side)
against the same measure at control points halfway between joins, each next to the step of the clip's TRUE track
(decoded from the mp4) at the same point, and `excess` = |output step - true step| point by point (what the
generation adds to the content's own step). For the longest length it writes spectrogram PNGs of 8 s around the
middle join, of the output and of the true track.

    OMP_NUM_THREADS=1 python benchmarks/bench_long_form.py [--model checkpoints/kling-foley-demo]
        [--lengths 10,30,60,120,300] [--clips events,steady] [--steps 20] [--window_seconds auto] [--workdir DIR]
        [--json_out FILE]
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


# The steady clip: a fixed 3 s cycle of 8 events (one every 0.375 s, on the nearest 25 fps frame) through the four
# classes at fixed positions and one fixed gain, so every 3 s stretch (the short-term loudness window) holds the same
# sounds and the true track's short-term loudness is flat: there an absolute loudness step at a join is the join's.
STEADY_CYCLE_SECONDS = 3.0
STEADY_CYCLE = (("bounce", 0.5), ("flash", 0.0), ("beep", 0.0), ("collide", -0.5)) * 2
STEADY_GAIN = 0.65


def make_clip(path: str, duration: float, seed: int, period: float = 0.8, steady: bool = False) -> list[dict]:
    """A synthetic `classic`-look clip of `duration` s; writes `path` (mp4, its true sound as the AAC track) and
    returns the events.

    `steady=False` ("events"): events on a jittered `period` grid, random classes, positions and gains (the
    sound's own loudness moves by a few dB from one 3 s stretch to the next; every join has events within a second
    of it). `steady=True`: the fixed `STEADY_CYCLE` every `STEADY_CYCLE_SECONDS` at `STEADY_GAIN`."""
    from foley_toolkit.synthetic import (
        EVENT_CLASSES,
        MAX_ABS_X,
        MIN_ABS_X_MOVING,
        SyntheticClip,
        SyntheticEvent,
        constant_power_pan,
        event_sound,
        render_audio,
        render_video,
        write_clip,
    )

    fps, sample_rate = 25, 44_100
    rng = np.random.default_rng(seed)
    num_frames = int(round(duration * fps))
    num_samples = int(round(num_frames / fps * sample_rate))
    if steady:
        events, k = [], 0
        while True:
            frame = int(0.5 * fps) + round(k * STEADY_CYCLE_SECONDS * fps / len(STEADY_CYCLE))
            if frame >= num_frames - int(0.6 * fps):
                break
            name, x = STEADY_CYCLE[k % len(STEADY_CYCLE)]
            events.append(SyntheticEvent(frame / fps, name, x, EVENT_CLASSES[name].moving, frame))
            k += 1
        # render_audio draws a gain per event; the steady clip's gain is fixed (same mix, same noise floor).
        audio = np.zeros((2, num_samples))
        for event in events:
            sound = event_sound(event.event_class, rng, sample_rate) * STEADY_GAIN
            start = int(round(event.time * sample_rate))
            stop = min(num_samples, start + sound.size)
            left, right = constant_power_pan(event.x)
            audio[0, start:stop] += left * sound[: stop - start]
            audio[1, start:stop] += right * sound[: stop - start]
        audio += rng.standard_normal(audio.shape) * 3e-4
        audio = (audio * min(1.0, 0.98 / np.abs(audio).max())).astype(np.float32)
        frames = render_video(events, num_frames, fps)
        write_clip(SyntheticClip(frames, audio, float(fps), sample_rate, num_frames / fps, events, "", seed), path)
        return [event.to_dict() for event in events]
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
    audio = render_audio(events, num_samples, rng, sample_rate)
    frames = render_video(events, num_frames, fps)
    clip = SyntheticClip(frames, audio, float(fps), sample_rate, num_frames / fps, events, "", seed)
    write_clip(clip, path)
    return [event.to_dict() for event in events]


def true_audio(video: str, num_samples: int, sample_rate: int) -> np.ndarray:
    """The clip's true sound: the AAC track of its mp4 (decoded, aligned from sample 0), cut or padded to
    `num_samples`."""
    from foley_toolkit.audio_utils import load_audio

    audio = load_audio(video, sample_rate=sample_rate, mono=False)[:, :num_samples]
    return np.pad(audio, ((0, 0), (0, num_samples - audio.shape[1])))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: `VmHWM` of /proc/self/status (the peak of this program's own
    address space). Not `ru_maxrss`: after fork + exec Linux carries the parent's peak into the child's
    `ru_maxrss`, so a child started by a parent holding a loaded pipeline and the previous clips' audio would report
    the parent's memory. `ru_maxrss` only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
        "peak_rss_mb": peak_rss_mb(),
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


def loudness_steps(audio: np.ndarray, sample_rate: int, points, step_seconds: float) -> list:
    """Signed short-term loudness step (dB, after minus before, `step_seconds` each side) at each of `points`; None
    where a side would leave the clip."""
    duration = audio.shape[1] / sample_rate
    steps = []
    for p in points:
        if p - step_seconds < 0 or p + step_seconds > duration:
            steps.append(None)
            continue
        before = short_term_loudness(audio, sample_rate, p - step_seconds, p)
        after = short_term_loudness(audio, sample_rate, p, p + step_seconds)
        steps.append(after - before)
    return steps


def _spread(values) -> dict | None:
    values = [abs(v) for v in values if v is not None]
    if not values:
        return None
    return {"median": float(np.median(values)), "max": float(np.max(values)), "n": len(values)}


def seam_scores(audio, sample_rate, events, joins, near_seconds, step_seconds, true=None) -> dict:
    """Onset F1 near / away from joins, and loudness steps at the joins and at control points halfway between them.

    With `true` (the clip's true sound, same length) the steps are also measured on it at the same points, and
    `excess_step_db_*` is `|generated step - true step|` point by point: what the generation adds to the step the
    content itself makes there (at controls: the model's ordinary deviation; at joins: that plus any seam)."""
    from foley_toolkit.evaluation.sync_metrics import detect_onsets, match_onsets, onset_scores

    onsets = detect_onsets(audio, sample_rate)
    joins = np.asarray(joins)

    def near(t):
        return np.abs(joins - t).min() <= near_seconds

    times = [e["time"] for e in events]
    ref_near = [t for t in times if near(t)]
    ref_far = [t for t in times if not near(t)]
    est_near = [t for t in onsets if near(t)]
    est_far = [t for t in onsets if not near(t)]

    controls = list((joins[:-1] + joins[1:]) / 2) if len(joins) > 1 else []
    # Per block of the timeline (each join with the time up to the controls on either side): near / away counts.
    edges = np.concatenate([[-np.inf], controls, [np.inf]])
    block_counts = np.zeros((len(joins), 2, 3))
    for group, (ref, est) in enumerate(((ref_near, est_near), (ref_far, est_far))):
        ref, est = np.asarray(ref), np.asarray(est)
        for times_, column in ((ref, 1), (est, 2)):
            np.add.at(block_counts[:, group, column], np.searchsorted(edges, times_, side="right") - 1, 1)
        matched = [ref[i] for i, _ in match_onsets(ref, est)]
        np.add.at(block_counts[:, group, 0], np.searchsorted(edges, np.asarray(matched), side="right") - 1, 1)
    join_steps = loudness_steps(audio, sample_rate, joins, step_seconds)
    control_steps = loudness_steps(audio, sample_rate, controls, step_seconds)
    scores = {
        # Counts for F1 pooled over clips: (matched, reference events, detected onsets).
        "counts_near": [len(match_onsets(ref_near, est_near)), len(ref_near), len(est_near)],
        "counts_away": [len(match_onsets(ref_far, est_far)), len(ref_far), len(est_far)],
        "num_joins": len(joins),
        "events_near_joins": len(ref_near),
        "events_away": len(ref_far),
        "f1_near_joins": onset_scores(ref_near, est_near)["f1"],
        "f1_away": onset_scores(ref_far, est_far)["f1"],
        "f1_near_minus_away": f1_difference_interval(block_counts),
        "block_counts": block_counts.astype(int).tolist(),  # for intervals pooled over clips
        "loudness_step_db_at_joins": _spread(join_steps),
        "loudness_step_db_at_controls": _spread(control_steps),
        "joins_stepping_over_1_5_db": sum(abs(s) > 1.5 for s in join_steps if s is not None),
    }
    if true is not None:
        true_joins = loudness_steps(true, sample_rate, joins, step_seconds)
        true_controls = loudness_steps(true, sample_rate, controls, step_seconds)

        def excess(generated, reference):
            return [g - r if g is not None else None for g, r in zip(generated, reference)]

        scores.update({
            "true_track_step_db_at_joins": _spread(true_joins),
            "true_track_step_db_at_controls": _spread(true_controls),
            "excess_step_db_at_joins": _spread(excess(join_steps, true_joins)),
            "excess_step_db_at_controls": _spread(excess(control_steps, true_controls)),
            "steps_db": {  # point by point, signed: (generated, true)
                "joins": [(round(g, 2), round(r, 2)) for g, r in zip(join_steps, true_joins) if g is not None],
                "controls": [(round(g, 2), round(r, 2)) for g, r in zip(control_steps, true_controls) if g is not None],
            },
        })  # fmt: skip
    return scores


def _f1(matched, references, detected):
    precision, recall = matched / np.maximum(detected, 1), matched / np.maximum(references, 1)
    return 2 * precision * recall / np.maximum(precision + recall, 1e-12)


def f1_difference_interval(block_counts: np.ndarray, rounds: int = 4000, seed: int = 0) -> dict:
    """F1 near joins minus F1 away, with a 95% block-bootstrap interval.

    `block_counts` is `(blocks, 2, 3)`: per block of the timeline (one join and the time around it, up to the
    control points halfway to its neighbours), the (matched, reference events, detected onsets) counts near the join
    and away from it. Blocks are resampled with replacement (so the dependence between nearby events is kept), the
    counts summed and both F1s recomputed."""
    totals = block_counts.sum(axis=0)
    difference = float(_f1(*totals[0]) - _f1(*totals[1]))
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, block_counts.shape[0], size=(rounds, block_counts.shape[0]))
    sums = block_counts[picks].sum(axis=1)  # (rounds, 2, 3)
    samples = _f1(*np.moveaxis(sums[:, 0], -1, 0)) - _f1(*np.moveaxis(sums[:, 1], -1, 0))
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"difference": difference, "interval_95": [float(low), float(high)], "blocks": int(block_counts.shape[0])}


def pooled_f1(records: list[dict], group: str) -> float:
    matched, references, detected = (sum(r["seams"][f"counts_{group}"][i] for r in records) for i in range(3))
    return float(_f1(matched, references, detected))


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
    parser.add_argument("--clips", default="events,steady",
                        help="clip kinds, comma-separated: 'events' (random events and gains), 'steady' (a fixed cycle "
                        "of events at one gain: flat true loudness)")  # fmt: skip
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
    lengths = [float(x) for x in args.lengths.split(",")]
    kinds = [k for k in args.clips.split(",") if k]
    if not kinds or set(kinds) - {"events", "steady"}:
        raise ValueError(f"--clips must list 'events' and/or 'steady', got {args.clips!r}")
    results = []
    for index, length in enumerate(lengths):
        plan = plan_for_duration(pipe, length, window)
        joins = [sum(plan.crossfade(k)) / 2 * seconds_per_frame for k in range(1, plan.num_windows)]
        for kind in kinds:
            stem = os.path.join(workdir, f"clip_{length:g}s" + ("_steady" if kind == "steady" else ""))
            video, out, events_file = stem + ".mp4", stem + ".wav", stem + ".mp4.events.json"
            if os.path.isfile(video) and os.path.isfile(events_file):  # rendered by an earlier run in this --workdir
                with open(events_file) as f:
                    events = json.load(f)
            else:
                seed = index + (100 if kind == "steady" else 0)
                events = make_clip(video, length, seed=seed, steady=kind == "steady")
                with open(events_file, "w") as f:
                    json.dump(events, f)
            if args.prepare_only:
                continue
            child = run_length(args, length, args.window_seconds, video, out)
            record = {"clip": kind, "video_seconds": length, "windows": plan.num_windows, "events": len(events)}
            record.update(child)
            audio, rate = sf.read(out, dtype="float32", always_2d=True)
            audio = audio.T
            true = true_audio(video, audio.shape[1], rate)
            record["audio_seconds"] = audio.shape[1] / rate
            record["level"] = level(audio, rate)
            record["level_of_the_true_track"] = level(true, rate)
            if plan.num_windows > 1:
                # Steps of the output next to the true track's steps at the same points: how large this content's own
                # steps are there, and what the generation adds to them.
                record["seams"] = seam_scores(audio, rate, events, joins, args.near_seconds, args.step_seconds, true)
                record["joins_seconds"] = [round(j, 3) for j in joins]
                if length == max(lengths):
                    centre = joins[len(joins) // 2]
                    record["spectrogram_png"] = []
                    for name, sound in (("generated", audio), ("true", true)):
                        png = f"{stem}_join_{name}.png"
                        excerpt = sound[:, int((centre - 4) * rate) : int((centre + 4) * rate)]
                        save_spectrogram(excerpt, png, rate, title=f"{kind} {length:g} s, {name}: "
                                         f"{centre - 4:.2f}-{centre + 4:.2f} s (join at the centre)")  # fmt: skip
                        record["spectrogram_png"].append(png)
            if length in one_pass_lengths:
                # The same clip in one pass (window_seconds=None), scored at the same join points.
                one_pass_out = stem + "_one_pass.wav"
                one_pass = run_length(args, length, "none", video, one_pass_out)
                one_pass_audio = sf.read(one_pass_out, dtype="float32", always_2d=True)[0].T
                record["one_pass"] = {
                    "seconds": one_pass["seconds"],
                    "peak_rss_mb": one_pass["peak_rss_mb"],
                    "level": level(one_pass_audio, rate),
                    "seams": seam_scores(one_pass_audio, rate, events, joins, args.near_seconds, args.step_seconds,
                                         true),  # fmt: skip
                }
            results.append(record)
            print(json.dumps(record), flush=True)

    if args.prepare_only:
        return
    for kind in kinds:
        of_kind = [r for r in results if r["clip"] == kind]
        base = of_kind[0]["seconds"] / of_kind[0]["video_seconds"]
        for record in of_kind:
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
    for kind in kinds:
        windowed = [r for r in results if "seams" in r and r["clip"] == kind]
        if windowed:
            summary[f"pooled_f1_near_joins_{kind}"] = pooled_f1(windowed, "near")
            summary[f"pooled_f1_away_{kind}"] = pooled_f1(windowed, "away")
            blocks = np.concatenate([np.asarray(r["seams"]["block_counts"], dtype=float) for r in windowed])
            summary[f"pooled_f1_near_minus_away_{kind}"] = f1_difference_interval(blocks)
    rss = {r["video_seconds"]: r["peak_rss_mb"] for r in results if r["clip"] == kinds[0]}
    if 60.0 in rss and 300.0 in rss:
        summary["peak_rss_growth_60_to_300_mb"] = rss[300.0] - rss[60.0]
    print(json.dumps(summary, indent=1))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
