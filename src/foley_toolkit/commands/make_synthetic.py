"""`foley-toolkit make-synthetic`: write the synthetic audio-visual dataset (see `foley_toolkit.synthetic`)."""

from __future__ import annotations

import argparse
import time


def _float_list(text: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive comma-separated numbers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..synthetic import EVENT_CLASSES, LOOK_FAMILIES

    families = "\n".join(f"  {name:9s} {family.description}" for name, family in LOOK_FAMILIES.items())
    parser = subparsers.add_parser(
        "make-synthetic",
        help="generate a synthetic audio-visual dataset with known event times",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Writes clip_XXXXX.mp4 (H.264 + AAC stereo 44.1 kHz), clip_XXXXX.wav and metadata.jsonl\n"
            "(file_name, caption, duration, fps, events with time/class/x/moving/frame, seed, look_family,\n"
            "look, silent_span) to --out.\n\n"
            "Each clip's look (frame size, background, object shapes/colours/textures, camera shake,\n"
            "lighting drift, grain, silent distractors, silent stretches) is drawn from one of the --looks\n"
            "families:\n" + families + "\n\n"
            "Train on every family but one and evaluate on it:\n"
            "  foley-toolkit make-synthetic --out train --num-clips 500 --looks all --held-out-looks neon\n"
            "  foley-toolkit make-synthetic --out heldout --num-clips 50 --seed 2 --looks neon"
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--num-clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; clip i uses clip_seed(seed, i)")
    parser.add_argument("--min-duration", type=float, default=2.0, help="shortest clip, seconds")
    parser.add_argument("--max-duration", type=float, default=12.0, help="longest clip, seconds")
    parser.add_argument(
        "--fps-choices",
        type=_float_list,
        default=[12, 24, 25, 30, 60],
        help="comma-separated frame rates to draw from",
    )
    parser.add_argument(
        "--looks",
        default="classic",
        help=f"comma-separated look families, or 'all' (default: classic); one of {','.join(LOOK_FAMILIES)}",
    )
    parser.add_argument(
        "--held-out-looks",
        default="",
        help="comma-separated families never drawn (e.g. --looks all --held-out-looks neon)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="fixed frame width in pixels (even; default: drawn by the look)"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="fixed frame height in pixels (even; default: drawn by the look)"
    )
    parser.add_argument("--max-events", type=int, default=4, help="at most this many events per clip")
    parser.add_argument(
        "--classes",
        default=",".join(EVENT_CLASSES),
        help=f"comma-separated event classes to use (default: all of {','.join(EVENT_CLASSES)})",
    )
    parser.add_argument("--no-wav", action="store_true", help="do not write the lossless .wav beside each .mp4")
    parser.add_argument(
        "--num-workers", type=int, default=1, help="worker processes (output is the same for any value)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synthetic import generate_dataset, resolve_looks

    classes = [name.strip() for name in args.classes.split(",") if name.strip()]
    families = resolve_looks(args.looks, args.held_out_looks)  # raises on bad names before any work
    start = time.perf_counter()
    records = generate_dataset(
        args.out,
        num_clips=args.num_clips,
        seed=args.seed,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        fps_choices=args.fps_choices,
        width=args.width,
        height=args.height,
        event_classes=classes,
        max_events=args.max_events,
        looks=families,
        write_wav=not args.no_wav,
        num_workers=args.num_workers,
        progress=True,
    )
    seconds = sum(record["duration"] for record in records)
    events = sum(len(record["events"]) for record in records)
    counts = {name: sum(record["look_family"] == name for record in records) for name in families}
    print(
        f"wrote {len(records)} clips ({seconds:.1f} s of video, {events} events) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s; looks: "
        + ", ".join(f"{name} {count}" for name, count in counts.items())
    )
    return 0
