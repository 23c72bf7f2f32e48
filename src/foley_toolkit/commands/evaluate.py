"""`foley-toolkit evaluate`: the distribution metrics of the Kling-Foley paper's Table 1 on a folder of generated
audio against a folder of reference audio, with av-benchmark's conventions.

    foley-toolkit evaluate --pred DIR --ref DIR --panns-weights Cnn14_16k_mAP=0.438.pth [--metrics ...] [--json OUT]
        [--passt-weights PT] [--vggish-weights PTH] [--clap DIR --captions CSV]
        [--videos DIR --sync-encoder DIR --sync-head DIR] [--imagebind-weights PTH | --ib-embedder MODULE:FACTORY]

Files are paired by their path relative to the folder, without the extension (``pred/a/b.wav`` <-> ``ref/a/b.flac``);
every generated clip needs its reference and the other way round. Each clip is mixed to mono, its DC offset removed,
resampled to the extractor's rate and cropped to `--audio-seconds` (8 s, av-benchmark's ``audio_length``).

Metrics (Table 1 column order):
  FD_PaSST   Frechet distance between Gaussians fitted to the PaSST 768-d features (32 kHz, padded to 10 s; needs
             --passt-weights and the hear21passt package; part of the default metrics when --passt-weights is given).
  FD_PANNs   Frechet distance between Gaussians fitted to the CNN14 2048-d embeddings of the two sets.
  FD_VGG     the same on VGGish 128-d embeddings of every 0.96 s example of every clip (needs --vggish-weights;
             part of the default metrics when it is given).
  KL_PANNs   mean over pairs of KL(reference || generated) on the softmax of the 527 AudioSet logits.
  KL_PaSST   the same on PaSST's 527 logits (needs --passt-weights).
  IS         Inception score of the generated clips (softmax of the logits, 10 seeded splits; IS_std alongside).
  IB-score   mean cosine similarity of the ImageBind embeddings of each source video and its generated audio
             (av-benchmark; needs --videos and --imagebind-weights with Meta's ImageBind code installed, or any
             embedder plugged in with --ib-embedder module:factory).
  DeSync     mean |offset| (s) that Synchformer predicts between each video and its generated audio, on the first
             and the last 4.8 s (14 segments) of every clip (needs --videos, --sync-encoder, --sync-head; part of the
             default metrics when they are given). av-benchmark's model: --sync-encoder and --sync-head written
             by `foley-toolkit convert synchformer --checkpoint synchformer_state_dict.pth --out ENC --head-out HEAD`
             (16 kHz audio, 21 classes -2..+2 s); a head trained by train_sync_encoder.py also works
             (--sync-offset-step, --desync-window-segments).
  CLAP       (after the Table 1 columns) mean cosine similarity of the CLAP text embedding of each caption and the
             audio embedding of its generated clip (needs --clap and --captions).

PANNs weights: the public 16 kHz checkpoint ``Cnn14_16k_mAP=0.438.pth`` (zenodo.org/record/3987831, the one
av-benchmark uses), a folder written by `convert_panns_checkpoint`, or a Hub repository id with such a folder.
Embeddings are cached under `--cache-dir` by file content and extractor, so a second run only reads them.
Formulas, their sources and the commands that fetch every public extractor: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")

# Table 1 of the paper (and av-benchmark's output), in this order. Only some have an extractor here yet.
PAPER_COLUMNS = ("FD_PaSST", "FD_PANNs", "FD_VGG", "KL_PANNs", "KL_PaSST", "IS", "IB-score", "DeSync")
# Printed after the Table 1 columns.
EXTRA_COLUMNS = ("CLAP",)
METRICS = {
    "fd_passt": "FD_PaSST",
    "fd_panns": "FD_PANNs",
    "fd_vgg": "FD_VGG",
    "kl_panns": "KL_PANNs",
    "kl_passt": "KL_PaSST",
    "is": "IS",
    "ib_score": "IB-score",
    "desync": "DeSync",
    "clap": "CLAP",
}
PANNS_METRICS = ("fd_panns", "kl_panns", "is")
PASST_METRICS = ("fd_passt", "kl_passt")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="FD / KL / IS / DeSync / CLAP of generated audio against references (Table 1, av-benchmark conventions).",
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
    parser.add_argument(
        "--vggish-weights",
        default=None,
        help="VGGish weights (torchvggish's vggish-10086976.pth, a converted folder or a Hub id); adds FD_VGG.",
    )
    parser.add_argument(
        "--passt-weights",
        default=None,
        help="PaSST checkpoint passt-s-f128-p16-s10-ap.476-swa.pt (needs hear21passt); adds FD_PaSST and KL_PaSST.",
    )
    parser.add_argument("--clap", default=None, help="CLAP model (transformers ClapModel folder or Hub id); adds CLAP.")
    parser.add_argument(
        "--captions", default=None, help="Captions: CSV with name,caption columns or a metadata.jsonl (CLAP score)."
    )
    parser.add_argument("--videos", default=None, help="Folder of the source videos, same names as --pred (DeSync).")
    parser.add_argument(
        "--imagebind-weights", default=None, help="imagebind_huge.pth (needs Meta's ImageBind code); adds IB-score."
    )
    parser.add_argument(
        "--ib-embedder",
        default=None,
        help="IB-score embedder 'package.module:factory' returning an AudioVisualEmbedder, called with weights= and "
        "device= (default: foley_toolkit.evaluation.extractors.imagebind:ImageBindEmbedder).",
    )
    parser.add_argument("--sync-encoder", default=None, help="SynchformerEncoder folder or Hub id (DeSync).")
    parser.add_argument("--sync-head", default=None, help="Trained SynchformerSyncHead folder or Hub id (DeSync).")
    parser.add_argument(
        "--sync-offset-step",
        type=float,
        default=0.12,
        help="Seconds between the sync head's offset classes (its training --offset_step; default 0.12).",
    )
    parser.add_argument(
        "--desync-window-segments",
        type=int,
        default=14,
        help="Synchformer segments per DeSync window (default 14 = 4.8 s, av-benchmark's first and last 4.8 s).",
    )
    parser.add_argument("--audio-seconds", type=float, default=8.0, help="Crop every clip to this many seconds.")
    parser.add_argument("--cache-dir", default=None, help="Embedding cache (default: ~/.cache/foley_toolkit/embeddings).")
    parser.add_argument("--no-cache", action="store_true", help="Neither read nor write the embedding cache.")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="Processes that decode and resample audio (default 0: none)."
    )
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


def resolve_metrics(
    metrics: list[str] | None,
    with_videos: bool = False,
    with_vggish: bool = False,
    with_clap: bool = False,
    with_passt: bool = False,
    with_ib: bool = False,
) -> list[str]:
    if not metrics:
        optional = {
            "desync": with_videos, "fd_vgg": with_vggish, "clap": with_clap, "fd_passt": with_passt,
            "kl_passt": with_passt, "ib_score": with_ib,
        }  # fmt: skip
        return [m for m in METRICS if optional.get(m, True)]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"`--metrics`: unknown {unknown}; available: {', '.join(METRICS)}.")
    return list(dict.fromkeys(metrics))


class PreparedClips:
    """`torch.utils.data.Dataset` of ``(index, prepared waveform or None, error message or None)``: the decoding and
    resampling that `DataLoader` workers run in parallel (the preparer holds no model)."""

    def __init__(self, paths: list[str], preparer):
        self.paths, self.preparer = paths, preparer

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.preparer.load(self.paths[index]), None
        except (ValueError, FileNotFoundError) as error:  # re-raised in the main process, naming the clip
            return index, None, (type(error).__name__, str(error))


def extract_all(
    pairs, extractor, cache, progress: bool, sides: tuple[str, ...] = ("--pred", "--ref"), num_workers: int = 0
):
    """Extractor outputs of every generated and reference clip (those of `sides`): two lists of dicts, in `pairs`
    order (empty for a side not asked for). Clips not in `cache` are decoded and resampled by `num_workers`
    `DataLoader` processes (0: in this process) and run through the model here."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    items = [
        (name, flag, path)
        for name, pred_path, ref_path in pairs
        for flag, path in (("--pred", pred_path), ("--ref", ref_path))
        if flag in sides
    ]
    outputs: list[dict | None] = [None] * len(items)
    hashes: dict[int, str] = {}
    for index, (_, _, path) in enumerate(items):
        if cache is not None:
            hashes[index], outputs[index] = cache.lookup(path, extractor)
    todo = [index for index, result in enumerate(outputs) if result is None]
    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc=extractor.name, unit="clip", disable=not progress,
        file=sys.stderr,
    )  # fmt: skip
    loader = DataLoader(
        PreparedClips([items[i][2] for i in todo], extractor.preparer),
        batch_size=None,
        num_workers=num_workers,
    )
    for position, waveform, error in loader:
        index = todo[position]
        name, flag, _ = items[index]
        if error is not None:
            bar.close()
            kind = FileNotFoundError if error[0] == "FileNotFoundError" else ValueError
            raise kind(f"`{flag}` clip {name!r}: {error[1]}")
        outputs[index] = extractor.extract_prepared(waveform)
        if cache is not None:
            cache.put(hashes[index], extractor, outputs[index])
        bar.update(1)
    bar.close()
    by_side = {flag: [o for o, (_, f, _) in zip(outputs, items) if f == flag] for flag in ("--pred", "--ref")}
    return by_side["--pred"], by_side["--ref"]


def compute_metrics(metrics: list[str], pred_outputs, ref_outputs) -> dict[str, float]:
    """The requested metrics from per-clip extractor outputs (`{"embedding", "logits"}` each)."""
    import torch

    from ..evaluation.distribution_metrics import frechet_distance, inception_score, kl_divergence

    results: dict[str, float] = {}
    if "fd_panns" in metrics:
        pred = torch.stack([o["embedding"] for o in pred_outputs])
        ref = torch.stack([o["embedding"] for o in ref_outputs])
        results["FD_PANNs"] = frechet_distance(pred, ref)
    if "fd_vgg" in metrics:
        # One 128-d embedding per 0.96 s: FD over every example of every clip (av-benchmark concatenates them).
        pred = torch.cat([o["embedding"] for o in pred_outputs])
        ref = torch.cat([o["embedding"] for o in ref_outputs])
        results["FD_VGG"] = frechet_distance(pred, ref)
    if "fd_passt" in metrics:
        pred = torch.stack([o["embedding"] for o in pred_outputs])
        ref = torch.stack([o["embedding"] for o in ref_outputs])
        results["FD_PaSST"] = frechet_distance(pred, ref)
    if "kl_passt" in metrics:
        pred = torch.stack([o["logits"] for o in pred_outputs])
        ref = torch.stack([o["logits"] for o in ref_outputs])
        results["KL_PaSST"] = kl_divergence(pred, ref, activation="softmax")
    if "kl_panns" in metrics:
        pred = torch.stack([o["logits"] for o in pred_outputs])
        ref = torch.stack([o["logits"] for o in ref_outputs])
        results["KL_PANNs"] = kl_divergence(pred, ref, activation="softmax")
    if "is" in metrics:
        logits = torch.stack([o["logits"] for o in pred_outputs])
        results["IS"], results["IS_std"] = inception_score(logits, splits=min(10, logits.shape[0]))
    return results


def read_captions(path: str, names: list[str]) -> dict[str, str]:
    """``{name: caption}`` from av-benchmark's CSV (header with ``name`` and ``caption`` columns) or a
    ``metadata.jsonl`` (``file_name`` and ``caption`` per line, as `foley-toolkit make-synthetic` writes); names are
    matched without their extension."""
    import csv

    if not os.path.isfile(path):
        raise FileNotFoundError(f"`--captions` {path!r} is not a file.")
    captions: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        if path.lower().endswith((".jsonl", ".json")):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    captions[os.path.splitext(record["file_name"])[0]] = str(record["caption"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"`--captions` {path!r} line {number}: expected JSON with `file_name` and `caption` ({error}).") from error
        else:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"name", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"`--captions` {path!r} must be a CSV with `name` and `caption` columns (or a .jsonl).")
            for row in reader:
                captions[os.path.splitext(row["name"])[0]] = row["caption"]
    missing = [name for name in names if name not in captions]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"`--captions` {path!r} has no caption for {len(missing)} clip(s): {shown}.")
    return {name: captions[name] for name in names}


def find_video_files(folder: str, names: list[str]) -> dict[str, str]:
    """``{name: video path}`` for every clip name (relative path without extension) under `folder`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"`--videos` {folder!r} is not a directory.")
    found = {}
    for root, _, files in os.walk(folder):
        for file in files:
            if file.lower().endswith(VIDEO_EXTENSIONS):
                path = os.path.join(root, file)
                found.setdefault(os.path.splitext(os.path.relpath(path, folder))[0].replace(os.sep, "/"), path)
    missing = [name for name in names if name not in found]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"`--videos` {folder!r} has no video for {len(missing)} clip(s): {shown}.")
    return {name: found[name] for name in names}


def compute_desync(args, pairs, videos: dict[str, str], device: str):
    """DeSync of the generated clips against their videos (av-benchmark windowing), and the scorer."""
    from tqdm.auto import tqdm

    from ..evaluation.extractors.synchformer_desync import SynchformerDeSync, SynchformerOffsetDeSync, desync_score

    if SynchformerDeSync.head_class_name(args.sync_head) == "SynchformerOffsetClassifier":
        # The public Synchformer (converted with `convert synchformer --head-out`): its own 14-segment window and
        # -2..+2 s class grid, as in av-benchmark.
        scorer = SynchformerOffsetDeSync.from_pretrained(args.sync_encoder, args.sync_head, device=device)
    else:
        scorer = SynchformerDeSync.from_pretrained(
            args.sync_encoder,
            args.sync_head,
            offset_step=args.sync_offset_step,
            window_segments=args.desync_window_segments,
            device=device,
        )
    offsets = []
    for name, pred_path, _ in tqdm(pairs, desc="desync", unit="clip", disable=args.no_progress, file=sys.stderr):
        try:
            offsets.append(scorer.file_offsets(videos[name], pred_path, max_seconds=args.audio_seconds))
        except ValueError as error:
            raise ValueError(f"DeSync of clip {name!r}: {error}") from error
    return desync_score(offsets), scorer


def format_table(results: dict[str, float]) -> str:
    columns = [c for c in PAPER_COLUMNS + EXTRA_COLUMNS if c in results]
    widths = [max(len(c), 10) for c in columns]
    header = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    row = "  ".join(f"{results[c]:.4f}".rjust(w) for c, w in zip(columns, widths))
    return f"{header}\n{row}"


def run(args) -> int:
    import torch

    from ..evaluation.embedding_cache import EmbeddingCache, default_cache_dir
    from ..evaluation.extractors import PANNsExtractor, VGGishExtractor

    metrics = resolve_metrics(
        args.metrics,
        with_videos=args.videos is not None and args.sync_encoder is not None and args.sync_head is not None,
        with_vggish=args.vggish_weights is not None,
        with_clap=args.clap is not None and args.captions is not None,
        with_passt=args.passt_weights is not None,
        with_ib=args.videos is not None and (args.imagebind_weights is not None or args.ib_embedder is not None),
    )
    if args.num_workers < 0:
        raise ValueError(f"`--num-workers` must be >= 0, got {args.num_workers}.")
    if not (args.audio_seconds > 0 and math.isfinite(args.audio_seconds)):
        raise ValueError(f"`--audio-seconds` must be a positive number, got {args.audio_seconds}.")
    pairs = pair_files(find_audio_files(args.pred, "--pred"), find_audio_files(args.ref, "--ref"))
    if ("fd_panns" in metrics or "fd_vgg" in metrics or "fd_passt" in metrics) and len(pairs) < 2:
        raise ValueError(f"FD needs at least 2 clips per folder, got {len(pairs)}.")
    panns_metrics = [m for m in metrics if m in PANNS_METRICS]
    if "desync" in metrics and (args.videos is None or args.sync_encoder is None or args.sync_head is None):
        raise ValueError("DeSync needs `--videos`, `--sync-encoder` and `--sync-head`.")
    if panns_metrics and args.panns_weights is None:
        raise ValueError(
            "`--panns-weights` is required for " + ", ".join(METRICS[m] for m in panns_metrics) + ": the CNN14 checkpoint "
            "Cnn14_16k_mAP=0.438.pth (https://zenodo.org/record/3987831), a converted folder or a Hub repository id."
        )
    if "fd_vgg" in metrics and args.vggish_weights is None:
        raise ValueError(
            "`--vggish-weights` is required for FD_VGG: the torchvggish checkpoint vggish-10086976.pth "
            "(https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth), a converted "
            "folder or a Hub repository id."
        )
    passt_metrics = [m for m in metrics if m in PASST_METRICS]
    if passt_metrics and args.passt_weights is None:
        raise ValueError(
            "`--passt-weights` is required for " + ", ".join(METRICS[m] for m in passt_metrics) + ": the PaSST "
            "checkpoint passt-s-f128-p16-s10-ap.476-swa.pt (https://github.com/kkoutini/PaSST/releases/tag/"
            "v0.0.1-audioset), read with the hear21passt package (`pip install hear21passt`)."
        )
    if "clap" in metrics and (args.clap is None or args.captions is None):
        raise ValueError("the CLAP score needs `--clap` (a CLAP model folder or Hub id) and `--captions`.")
    captions = read_captions(args.captions, [name for name, _, _ in pairs]) if "clap" in metrics else None
    if "ib_score" in metrics and (args.videos is None or (args.imagebind_weights is None and args.ib_embedder is None)):
        raise ValueError("IB-score needs `--videos` and `--imagebind-weights` (or an embedder from `--ib-embedder`).")
    videos = None
    if "desync" in metrics or "ib_score" in metrics:
        videos = find_video_files(args.videos, [name for name, _, _ in pairs])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, float] = {}
    extractors: dict[str, dict] = {}
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir or default_cache_dir())

    def score_with(extractor_class, weights, metric_names):
        """Embed every pair with one audio extractor, compute `metric_names` from it and record the extractor."""
        extractor = extractor_class.from_pretrained(weights, device=device, max_seconds=args.audio_seconds)
        pred_outputs, ref_outputs = extract_all(
            pairs, extractor, cache, progress=not args.no_progress, num_workers=args.num_workers
        )
        results.update(compute_metrics(metric_names, pred_outputs, ref_outputs))
        extractors[extractor.name] = {
            "cache_key": extractor.cache_key,
            "sample_rate": extractor.sample_rate,
            "weights": os.fspath(weights),
        }

    if passt_metrics:
        from ..evaluation.extractors.passt import PaSSTExtractor

        score_with(PaSSTExtractor, args.passt_weights, passt_metrics)
    if panns_metrics:
        score_with(PANNsExtractor, args.panns_weights, panns_metrics)
    if "fd_vgg" in metrics:
        score_with(VGGishExtractor, args.vggish_weights, ["fd_vgg"])
    if captions is not None:
        from ..evaluation.distribution_metrics import mean_cosine_similarity
        from ..evaluation.extractors.clap import ClapExtractor

        extractor = ClapExtractor.from_pretrained(args.clap, device=device, max_seconds=args.audio_seconds)
        pred_outputs, _ = extract_all(
            pairs, extractor, cache, progress=not args.no_progress, sides=("--pred",), num_workers=args.num_workers
        )
        text = extractor.embed_text([captions[name] for name, _, _ in pairs])
        results["CLAP"] = mean_cosine_similarity(text, torch.stack([o["embedding"] for o in pred_outputs]))
        extractors[extractor.name] = {"cache_key": extractor.cache_key, "model": os.fspath(args.clap)}
    if "ib_score" in metrics:
        from ..evaluation.extractors.imagebind import ib_score, load_embedder

        spec = args.ib_embedder or "foley_toolkit.evaluation.extractors.imagebind:ImageBindEmbedder"
        embedder = load_embedder(spec, weights=args.imagebind_weights, device=device)
        results["IB-score"] = ib_score(embedder, [(videos[name], pred_path) for name, pred_path, _ in pairs])
        extractors["ib_score"] = {"embedder": spec, "name": embedder.name, "weights": args.imagebind_weights}
    if "desync" in metrics:
        results["DeSync"], scorer = compute_desync(args, pairs, videos, device)
        extractors["synchformer"] = {
            "encoder": os.fspath(args.sync_encoder),
            "head": os.fspath(args.sync_head),
            "head_class": type(scorer.head).__name__,
            "offset_step": round(scorer.offset_grid[1] - scorer.offset_grid[0], 6),
            "offset_grid": list(scorer.offset_grid),
            "sample_rate": scorer.sample_rate,
            "window_segments": scorer.window_segments,
        }

    print(f"{len(pairs)} pairs  ({os.path.abspath(args.pred)} vs {os.path.abspath(args.ref)})")
    print(format_table(results))
    report = {
        "metrics": results,
        "num_pairs": len(pairs),
        "pred": os.path.abspath(args.pred),
        "ref": os.path.abspath(args.ref),
        "audio_seconds": args.audio_seconds,
        "extractors": extractors,
        "cache": None if cache is None else {"dir": cache.root, "hits": cache.hits, "misses": cache.misses},
        "conventions": "av-benchmark: FD on CNN14 2048-d embeddings, PaSST 768-d features and VGGish 0.96 s embeddings; "
        "KL(ref||gen) softmax (PANNs and PaSST logits), mean over pairs; "
        "IS softmax, 10 seeded splits; DeSync mean |offset| over the first and last window of every clip",
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json_out}")
    return 0
