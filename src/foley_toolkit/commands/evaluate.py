"""`foley-toolkit evaluate`: the distribution metrics of the Kling-Foley paper's Table 1 on a folder of generated
audio against a folder of reference audio, with av-benchmark's conventions.

    foley-toolkit evaluate --pred DIR --ref DIR --panns-weights Cnn14_16k_mAP=0.438.pth [--metrics ...] [--json OUT]

Files are paired by their path relative to the folder, without the extension (``pred/a/b.wav`` <-> ``ref/a/b.flac``);
every generated clip needs its reference and the other way round. Each clip is mixed to mono, its DC offset removed,
resampled to the extractor's rate and cropped to `--audio-seconds` (8 s, av-benchmark's ``audio_length``).

Metrics (Table 1 column order; only the PANNs ones are implemented so far -- FD_PaSST, FD_VGG, KL_PaSST, IB-score and
DeSync need their extractors):
  FD_PANNs   Frechet distance between Gaussians fitted to the CNN14 2048-d embeddings of the two sets.
  KL_PANNs   mean over pairs of KL(reference || generated) on the softmax of the 527 AudioSet logits.
  IS         Inception score of the generated clips (softmax of the logits, 10 seeded splits; IS_std alongside).

PANNs weights: the public 16 kHz checkpoint ``Cnn14_16k_mAP=0.438.pth`` (zenodo.org/record/3987831, the one
av-benchmark uses), a folder written by `convert_panns_checkpoint`, or a Hub repository id with such a folder.
Embeddings are cached under `--cache-dir` by file content and extractor, so a second run only reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")

# Table 1 of the paper (and av-benchmark's output), in this order. Only some have an extractor here yet.
PAPER_COLUMNS = ("FD_PaSST", "FD_PANNs", "FD_VGG", "KL_PANNs", "KL_PaSST", "IS", "IB-score", "DeSync")
METRICS = {"fd_panns": "FD_PANNs", "kl_panns": "KL_PANNs", "is": "IS"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="FD / KL / IS of generated audio against reference audio (Table 1, av-benchmark conventions).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", required=True, help="Folder of generated audio (searched recursively).")
    parser.add_argument("--ref", required=True, help="Folder of reference audio, same names as --pred.")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help=f"Subset of {', '.join(METRICS)} (default: all)."
    )
    parser.add_argument(
        "--panns-weights",
        default=None,
        help="CNN14 weights: a Cnn14*.pth file, a converted folder, or a Hub repository id.",
    )
    parser.add_argument("--audio-seconds", type=float, default=8.0, help="Crop every clip to this many seconds.")
    parser.add_argument("--cache-dir", default=None, help="Embedding cache (default: ~/.cache/foley_toolkit/embeddings).")
    parser.add_argument("--no-cache", action="store_true", help="Neither read nor write the embedding cache.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--json", dest="json_out", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.set_defaults(func=run)


def find_audio_files(folder: str, flag: str) -> dict[str, str]:
    """``{name: path}`` for the audio files under `folder`; name = relative path without extension."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"`{flag}` {folder!r} is not a directory.")
    files: dict[str, str] = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if not name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            key = os.path.splitext(os.path.relpath(path, folder))[0].replace(os.sep, "/")
            if key in files:
                raise ValueError(f"`{flag}` holds two files named {key!r}: {files[key]!r} and {path!r}.")
            files[key] = path
    if not files:
        raise FileNotFoundError(f"`{flag}` {folder!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}).")
    return dict(sorted(files.items()))


def pair_files(pred: dict[str, str], ref: dict[str, str]) -> list[tuple[str, str, str]]:
    """``[(name, pred_path, ref_path)]``; a ValueError names the clips that lack a partner."""
    only_pred, only_ref = sorted(set(pred) - set(ref)), sorted(set(ref) - set(pred))
    if only_pred or only_ref:
        parts = []
        for flag, names in (("--pred", only_pred), ("--ref", only_ref)):
            if names:
                shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                parts.append(f"{len(names)} clip(s) only in `{flag}`: {shown}")
        raise ValueError("mismatched names between `--pred` and `--ref`; " + "; ".join(parts) + ".")
    return [(name, pred[name], ref[name]) for name in pred]


def resolve_metrics(metrics: list[str] | None) -> list[str]:
    if not metrics:
        return list(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"`--metrics`: unknown {unknown}; available: {', '.join(METRICS)}.")
    return list(dict.fromkeys(metrics))


def extract_all(pairs, extractor, cache, progress: bool):
    """Extractor outputs of every generated and reference clip: two lists of dicts, in `pairs` order."""
    import torch
    from tqdm.auto import tqdm

    pred_outputs, ref_outputs = [], []
    bar = tqdm(total=2 * len(pairs), desc=f"{extractor.name}", unit="clip", disable=not progress, file=sys.stderr)
    for name, pred_path, ref_path in pairs:
        for flag, path, outputs in (("--pred", pred_path, pred_outputs), ("--ref", ref_path, ref_outputs)):
            try:
                if cache is not None:
                    result = cache.extract_file(path, extractor)
                else:
                    result = extractor.extract_prepared(extractor.load(path))
            except (ValueError, FileNotFoundError) as error:
                bar.close()
                raise type(error)(f"`{flag}` clip {name!r}: {error}") from error
            outputs.append({key: torch.as_tensor(value) for key, value in result.items()})
            bar.update(1)
    bar.close()
    return pred_outputs, ref_outputs


def compute_metrics(metrics: list[str], pred_outputs, ref_outputs) -> dict[str, float]:
    """The requested metrics from per-clip extractor outputs (`{"embedding", "logits"}` each)."""
    import torch

    from ..evaluation.distribution_metrics import frechet_distance, inception_score, kl_divergence

    results: dict[str, float] = {}
    if "fd_panns" in metrics:
        pred = torch.stack([o["embedding"] for o in pred_outputs])
        ref = torch.stack([o["embedding"] for o in ref_outputs])
        results["FD_PANNs"] = frechet_distance(pred, ref)
    if "kl_panns" in metrics:
        pred = torch.stack([o["logits"] for o in pred_outputs])
        ref = torch.stack([o["logits"] for o in ref_outputs])
        results["KL_PANNs"] = kl_divergence(pred, ref, activation="softmax")
    if "is" in metrics:
        logits = torch.stack([o["logits"] for o in pred_outputs])
        results["IS"], results["IS_std"] = inception_score(logits, splits=min(10, logits.shape[0]))
    return results


def format_table(results: dict[str, float]) -> str:
    columns = [c for c in PAPER_COLUMNS if c in results]
    widths = [max(len(c), 10) for c in columns]
    header = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    row = "  ".join(f"{results[c]:.4f}".rjust(w) for c, w in zip(columns, widths))
    return f"{header}\n{row}"


def run(args) -> int:
    import torch

    from ..evaluation.embedding_cache import EmbeddingCache, default_cache_dir
    from ..evaluation.extractors import PANNsExtractor

    metrics = resolve_metrics(args.metrics)
    if not (args.audio_seconds > 0 and math.isfinite(args.audio_seconds)):
        raise ValueError(f"`--audio-seconds` must be a positive number, got {args.audio_seconds}.")
    pairs = pair_files(find_audio_files(args.pred, "--pred"), find_audio_files(args.ref, "--ref"))
    if "fd_panns" in metrics and len(pairs) < 2:
        raise ValueError(f"FD needs at least 2 clips per folder, got {len(pairs)}.")
    if args.panns_weights is None:
        raise ValueError(
            "`--panns-weights` is required for " + ", ".join(METRICS[m] for m in metrics) + ": the CNN14 checkpoint "
            "Cnn14_16k_mAP=0.438.pth (https://zenodo.org/record/3987831), a converted folder or a Hub repository id."
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = PANNsExtractor.from_pretrained(args.panns_weights, device=device, max_seconds=args.audio_seconds)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir or default_cache_dir())

    pred_outputs, ref_outputs = extract_all(pairs, extractor, cache, progress=not args.no_progress)
    results = compute_metrics(metrics, pred_outputs, ref_outputs)

    print(f"{len(pairs)} pairs  ({os.path.abspath(args.pred)} vs {os.path.abspath(args.ref)})")
    print(format_table(results))
    report = {
        "metrics": results,
        "num_pairs": len(pairs),
        "pred": os.path.abspath(args.pred),
        "ref": os.path.abspath(args.ref),
        "audio_seconds": args.audio_seconds,
        "extractors": {
            extractor.name: {
                "cache_key": extractor.cache_key,
                "sample_rate": extractor.sample_rate,
                "weights": os.fspath(args.panns_weights),
            }
        },
        "cache": None if cache is None else {"dir": cache.root, "hits": cache.hits, "misses": cache.misses},
        "conventions": "av-benchmark: FD on CNN14 2048-d embeddings; KL(ref||gen) softmax, mean over pairs; "
        "IS softmax, 10 seeded splits",
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json_out}")
    return 0
