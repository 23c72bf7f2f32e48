"""`foley-toolkit eval-sync`: onset precision/recall/F1, offset and pan accuracy of audio against known
event times, with the level of every clip (loudness, peak, DC offset; clips below --silence-lufs count as silent)
and, where the true audio is known, the per-event loudness error (see `foley_toolkit.evaluation.sync_metrics`)."""

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
            "onsets and prints a table and the JSON summary, including a shuffled-pair control. Every clip's "
            "level is measured (BS.1770 loudness, peak dBFS, DC offset); a clip quieter than --silence-lufs is "
            "silent and all its events are misses. Where the true audio is known (--reference-dir, or the "
            "'audio_file' / 'file_name' the events file names next to it), the loudness error per event "
            "(generated minus true level over --level-window-ms after each event) is reported; JSON has null "
            "for undefined values (e.g. the loudness of digital silence)."
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
    parser.add_argument(
        "--reference-dir",
        default=None,
        help="folder with the true audio of each clip (same stems); default: the files the events file names",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the per-event loudness error")
    parser.add_argument(
        "--silence-lufs", type=float, default=-50.0, help="clips quieter than this (LUFS) are silent: no onsets"
    )
    parser.add_argument(
        "--level-window-ms", type=float, default=200.0, help="window after each event for the loudness error"
    )
    parser.add_argument("--json", default=None, help="also write the summary and per-clip results to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.sync_metrics import evaluate_sync_folder

    if args.tolerance_ms <= 0:
        raise ValueError(f"--tolerance-ms must be positive, got {args.tolerance_ms}")
    if args.level_window_ms <= 0:
        raise ValueError(f"--level-window-ms must be positive, got {args.level_window_ms}")
    if args.reference_dir is not None and args.no_reference:
        raise ValueError("--reference-dir and --no-reference exclude each other")
    extensions = ["." + ext.strip().lstrip(".") for ext in args.extensions.split(",") if ext.strip()]
    report = evaluate_sync_folder(
        args.audio_dir,
        args.events,
        tolerance_ms=args.tolerance_ms,
        extensions=extensions,
        shuffle_seed=args.seed,
        reference_dir=args.reference_dir,
        use_references=not args.no_reference,
        silence_lufs=args.silence_lufs,
        level_window_ms=args.level_window_ms,
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
