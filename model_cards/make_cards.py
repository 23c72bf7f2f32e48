"""Write the model-card template and one card per transformer preset into this folder.

    python model_cards/make_cards.py            # rewrite template.md and <preset>.md
    python model_cards/make_cards.py --check    # exit 1 when a committed card differs from a fresh one

Every number in the cards is computed here (models built on the meta device) or read from a committed benchmark
result (`benchmarks/results/`), none is typed by hand; the
template is `foley_toolkit.model_cards.MODEL_CARD_TEMPLATE`, the one every card of the toolkit uses.
"""

import argparse
import json
import sys
from pathlib import Path

from foley_toolkit.model_cards import MODEL_CARD_TEMPLATE, preset_card, speed_section

PRESETS = ("small", "kling-foley-1.5b", "kling-foley-3b", "kling-foley-6b")
FOLDER = Path(__file__).resolve().parent
# The measured per-stage speed of the `small` pipeline (benchmarks/bench_recipes.py, committed JSON result).
SPEED_RESULTS = {"small": FOLDER.parent / "benchmarks" / "results" / "recipes_fp32_2threads.json"}


def expected_files() -> dict[str, str]:
    """File name -> text of every generated file."""
    files = {"template.md": MODEL_CARD_TEMPLATE}
    for preset in PRESETS:
        speed = None
        if preset in SPEED_RESULTS:
            speed = speed_section(json.loads(SPEED_RESULTS[preset].read_text(encoding="utf-8")))
        files[f"{preset}.md"] = str(preset_card(preset, speed=speed))
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed files with fresh ones")
    args = parser.parse_args(argv)
    stale = []
    for name, text in expected_files().items():
        path = FOLDER / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python model_cards/make_cards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
