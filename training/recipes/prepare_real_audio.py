"""Real recordings for the codec: the audio of Debian sound packages as a clips folder the training scripts read.

    python training/recipes/prepare_real_audio.py --package_dir EXTRACTED_ROOT --output_dir clips/ \
        [--heldout_fraction 0.2] [--seed 0]

`--package_dir` is a folder into which the `.deb` files were unpacked (`dpkg-deb -x PKG.deb DIR`). Read from it:

* `usr/share/games/openttd/baseset/opensfx/opensfx.cat` (openttd-opensfx): recorded game effects in OpenTTD's sample
  container: a table of `(offset | 0x80000000, size)` little-endian uint32 pairs (its first offset / 8 = number of
  entries), and at each offset a length-prefixed, NUL-terminated title (author and licence) followed by a RIFF WAVE
  file of `size` bytes (two entries are empty placeholders: no samples, left out as too short);
* `usr/share/sounds/**/*.ogg|*.oga|*.wav`: oxygen-sounds (effects), sound-theme-freedesktop (effects, voices),
  alsa-utils (spoken channel names, pink noise).

Every recording becomes `OUTPUT/{train,heldout}/<package>/<name>.wav`: mono (channels averaged), 44.1 kHz, 16-bit,
with `metadata.jsonl` rows `{"file_name", "caption", "source", "seconds"}` in each split folder. The split is by file,
per package (so every package is in both), drawn with `--seed`: a held-out file is never trained on. Files shorter
than `--min_seconds` (too short for one codec crop of eval-codec) are left out and listed in `summary.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
from pathlib import Path

import numpy as np

OPENSFX_CAT = "usr/share/games/openttd/baseset/opensfx/opensfx.cat"
SOUND_EXTENSIONS = (".ogg", ".oga", ".wav")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package_dir", required=True, help="Root into which the .deb packages were extracted.")
    parser.add_argument("--output_dir", required=True, help="Writes train/ and heldout/ clip folders here.")
    parser.add_argument("--heldout_fraction", type=float, default=0.2, help="Share of each package's files held out.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the train / held-out split.")
    parser.add_argument("--min_seconds", type=float, default=0.1, help="Shorter recordings are left out.")
    args = parser.parse_args(argv)
    if not 0.0 < args.heldout_fraction < 1.0:
        raise ValueError(f"`--heldout_fraction` must be in (0, 1), got {args.heldout_fraction}.")
    if not os.path.isdir(args.package_dir):
        raise FileNotFoundError(f"`--package_dir` {args.package_dir!r} is not a directory.")
    return args


def read_opensfx_cat(path: str | os.PathLike) -> list[tuple[str, bytes]]:
    """`(title, RIFF WAVE bytes)` for every sample of an OpenTTD `.cat` sound container."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"`path` {str(path)!r} is too short for a .cat table.")
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    samples = []
    for index in range(count):
        offset, size = struct.unpack_from("<II", data, 8 * index)
        offset &= 0x7FFFFFFF  # the high bit flags the entry, it is not part of the offset
        name_length = data[offset]
        title = data[offset + 1 : offset + 1 + name_length].split(b"\0")[0].decode("utf-8", "replace")
        start = offset + 1 + name_length
        wave = data[start : start + size]  # `size` counts the WAVE file only, not the title before it
        if wave[:4] != b"RIFF" or wave[8:12] != b"WAVE":
            raise ValueError(f"`path` {str(path)!r}: entry {index} ({title!r}) is not a RIFF WAVE file.")
        samples.append((title, wave))
    return samples


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "clip"


def collect_recordings(package_dir: str) -> list[dict]:
    """Every recording as `{"source", "name", "caption", "audio" (float32 mono), "sample_rate"}`, sorted by source
    and name."""
    import soundfile as sf

    recordings = []
    cat = os.path.join(package_dir, OPENSFX_CAT)
    if os.path.isfile(cat):
        for index, (title, wave) in enumerate(read_opensfx_cat(cat)):
            audio, rate = sf.read(io.BytesIO(wave), dtype="float32", always_2d=True)
            caption = title.split(". By ")[0].split(". Original ")[0].strip('"')  # the title before the credits
            recordings.append(
                {
                    "source": "openttd-opensfx",
                    "name": f"{index:02d}-{_slug(caption)}",
                    "caption": caption,
                    "audio": audio.mean(1),
                    "sample_rate": rate,
                }
            )
    sounds = os.path.join(package_dir, "usr/share/sounds")
    for root, _, names in sorted(os.walk(sounds)):
        for name in sorted(names):
            if not name.lower().endswith(SOUND_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, sounds)
            source = {"alsa": "alsa-utils", "freedesktop": "sound-theme-freedesktop"}.get(
                relative.split(os.sep)[0], "oxygen-sounds"
            )
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
            stem = os.path.splitext(name)[0]
            recordings.append(
                {
                    "source": source,
                    "name": _slug(stem, 64),
                    "caption": stem.replace("-", " ").replace("_", " ").lower(),
                    "audio": audio.mean(1),
                    "sample_rate": rate,
                }
            )
    if not recordings:
        raise FileNotFoundError(
            f"`--package_dir` {package_dir!r} holds neither {OPENSFX_CAT} nor audio under usr/share/sounds."
        )
    return sorted(recordings, key=lambda r: (r["source"], r["name"]))


def main(argv=None) -> None:
    args = parse_args(argv)
    from foley_toolkit.audio_utils import SAMPLE_RATE, resample, save_audio

    recordings = collect_recordings(args.package_dir)
    rng = np.random.default_rng(args.seed)
    rows = {"train": [], "heldout": []}
    too_short = []
    for source in sorted({r["source"] for r in recordings}):
        group = []
        for recording in (r for r in recordings if r["source"] == source):
            if len(recording["audio"]) / recording["sample_rate"] >= args.min_seconds:
                group.append(recording)
            else:
                too_short.append(f"{source}/{recording['name']}")
        # Per-package split: at least one held-out and one training file per package.
        num_heldout = min(len(group) - 1, max(1, round(args.heldout_fraction * len(group))))
        heldout = set(rng.permutation(len(group))[:num_heldout].tolist())
        for index, recording in enumerate(group):
            split = "heldout" if index in heldout else "train"
            audio = resample(recording["audio"], recording["sample_rate"], SAMPLE_RATE)
            file_name = f"{source}/{recording['name']}.wav"
            save_audio(os.path.join(args.output_dir, split, file_name), audio, SAMPLE_RATE, subtype="PCM_16")
            rows[split].append(
                {
                    "file_name": file_name,
                    "caption": recording["caption"],
                    "source": source,
                    "seconds": round(len(audio) / SAMPLE_RATE, 4),
                }
            )
    summary = {"seed": args.seed, "heldout_fraction": args.heldout_fraction, "too_short": too_short}
    for split, split_rows in rows.items():
        with open(os.path.join(args.output_dir, split, "metadata.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in split_rows)
        summary[split] = {
            "files": len(split_rows),
            "seconds": round(sum(row["seconds"] for row in split_rows), 2),
            "per_source": {
                source: sum(row["source"] == source for row in split_rows)
                for source in sorted({row["source"] for row in split_rows})
            },
        }
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
