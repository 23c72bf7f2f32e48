"""`foley-toolkit eval-sync`: onset precision/recall/F1, offset and pan accuracy of audio against known
event times (see `foley_toolkit.evaluation.sync_metrics`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-sync",
        help="score how well audio onsets land on known event times (onset F1, offset, pan sign)",
        description=(
            "Pairs each record of --events (metadata.jsonl with 'file_name' and 'events') with the audio file "
            "of the same stem in --audio-dir (.wav, or a video such as .mp4 with an audio track), detects "
            "onsets and prints a table and the JSON summary, including a shuffled-pair control."
        ),
    )
    parser.add_argument(
        "--audio-dir", required=True, help="folder with the audio (.wav/.flac) or videos (.mp4) to score"
    )
    parser.add_argument("--events", required=True, help="metadata.jsonl with the known events of each clip")
    parser.add_argument("--tolerance-ms", type=float, default=80.0, help="matching tolerance in milliseconds")
    parser.add_argument(
        "--extensions",
        default="wav,flac,ogg,mp4,m4a,mkv,mov,webm",
        help="file extensions to look for, in order of preference (default prefers lossless .wav)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled-pair control")
    parser.add_argument("--json", default=None, help="also write the summary and per-clip results to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.sync_metrics import evaluate_sync_folder

    if args.tolerance_ms <= 0:
        raise ValueError(f"--tolerance-ms must be positive, got {args.tolerance_ms}")
    extensions = ["." + ext.strip().lstrip(".") for ext in args.extensions.split(",") if ext.strip()]
    report = evaluate_sync_folder(
        args.audio_dir, args.events, tolerance_ms=args.tolerance_ms, extensions=extensions, shuffle_seed=args.seed
    )
    print(report.format_table())
    summary = report.to_dict()
    print(json.dumps(summary, indent=2))
    if args.json:
        path = Path(args.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(with_clips=True), indent=2) + "\n", encoding="utf-8")
    return 0
