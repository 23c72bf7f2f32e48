"""`foley-toolkit convert`: a public pretrained part -> a `save_pretrained` folder the pipeline loads.

    foley-toolkit convert bigvgan --checkpoint nvidia/bigvgan_v2_44khz_128band_512x --out parts/vocoder
    foley-toolkit convert synchformer --checkpoint synchformer_state_dict.pth --out parts/sync_encoder \
        [--head-out parts/sync_classifier]
    foley-toolkit convert metaclip --checkpoint G14_fullcc2.5b.pt --out parts/vision_encoder
    foley-toolkit convert t5 --checkpoint google-t5/t5-base --out parts/text_encoder

`--checkpoint` is a local file or folder, or a Hub repo id (downloaded into the Hugging Face cache). Checkpoints are
read without unpickling code; one with missing or unexpected keys or wrong shapes is refused with the key named.
`synchformer --head-out DIR` also converts the audio branch and offset classifier of the same checkpoint (a
`SynchformerOffsetClassifier`, what `foley-toolkit evaluate` runs for DeSync with the public model).
Each conversion prints the licence of the weights it converted (MetaCLIP's is non-commercial).
"""

from __future__ import annotations

import argparse
import importlib

PARTS = ("bigvgan", "synchformer", "metaclip", "t5")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a public pretrained part (BigVGAN-v2, Synchformer, MetaCLIP, T5) into the toolkit's format.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("part", choices=PARTS, help="which part the checkpoint holds")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, folder, or Hub repo id")
    parser.add_argument("--out", required=True, help="new (or empty) output folder")
    parser.add_argument(
        "--config",
        default=None,
        help="bigvgan: the BigVGAN config.json (default: the one next to the checkpoint, else 44 kHz 128-band "
        "512x); metaclip: a transformers CLIPVisionConfig JSON or folder (default: ViT-bigG-14-quickgelu).",
    )
    parser.add_argument(
        "--head-out",
        default=None,
        help="synchformer: also convert the audio branch + offset classifier (DeSync) into this new folder.",
    )
    parser.set_defaults(func=run)


def _converter(part: str):
    if part == "synchformer":
        try:
            module = importlib.import_module("foley_toolkit.conversion.synchformer")
        except ModuleNotFoundError as error:
            if error.name != "foley_toolkit.conversion.synchformer":
                raise
            raise ValueError(
                "the Synchformer converter (foley_toolkit/conversion/synchformer.py) is not part of this installation."
            ) from error
        return module.convert_synchformer
    from foley_toolkit import conversion

    return getattr(conversion, f"convert_{part}")


def run(args) -> int:
    if args.config is not None and args.part not in ("bigvgan", "metaclip"):
        raise ValueError(f"--config is only read by `bigvgan` and `metaclip`, not `{args.part}`.")
    head_out = getattr(args, "head_out", None)
    if head_out is not None and args.part != "synchformer":
        raise ValueError(f"--head-out is only read by `synchformer`, not `{args.part}`.")
    convert = _converter(args.part)
    if head_out is not None:
        from foley_toolkit.conversion.common import prepare_output_dir

        prepare_output_dir(head_out, "head-out")  # refused before the visual branch is written
    kwargs = {"config": args.config} if args.config is not None else {}
    result = convert(args.checkpoint, args.out, **kwargs)
    model = result[0] if isinstance(result, tuple) else result
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Wrote {type(model).__name__} ({parameters / 1e6:.2f}M parameters) to {args.out}")
    if head_out is not None:
        from foley_toolkit.conversion.synchformer import convert_synchformer_offset_classifier

        head = convert_synchformer_offset_classifier(args.checkpoint, head_out)
        parameters = sum(p.numel() for p in head.parameters())
        print(f"Wrote {type(head).__name__} ({parameters / 1e6:.2f}M parameters) to {head_out}")
    return 0
