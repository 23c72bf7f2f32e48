"""`foley-toolkit assemble`: a KlingFoleyPipeline folder from converted parts plus a new or trained transformer.

    foley-toolkit assemble --vocoder parts/vocoder --sync-encoder parts/sync_encoder \
        --vision-encoder parts/vision_encoder --text-encoder parts/text_encoder \
        --transformer-preset small --out pipelines/from-public-parts

The encoders and the vocoder are `foley-toolkit convert` outputs (`--text-encoder` holds the T5 encoder and its
tokenizer). The transformer is new (`--transformer-preset`, input widths taken from the encoders' configs) or
trained (`--transformer DIR`, checked against the encoders); the MelVAE and the Mono2Stereo are trained folders or,
by default, new. The result loads with `KlingFoleyPipeline.from_pretrained(--out)`; train the new parts next.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "assemble",
        help="build a KlingFoleyPipeline folder from converted encoders/vocoder and a new or trained transformer.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vocoder", required=True, help="vocoder folder (convert bigvgan)")
    parser.add_argument("--sync-encoder", required=True, help="Synchformer folder (convert synchformer)")
    parser.add_argument("--vision-encoder", required=True, help="CLIP vision folder (convert metaclip)")
    parser.add_argument("--text-encoder", required=True, help="T5 encoder + tokenizer folder (convert t5)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--transformer-preset",
        help="a new transformer of this size: small, kling-foley-1.5b, kling-foley-3b or kling-foley-6b",
    )
    group.add_argument("--transformer", help="a trained FoleyMMDiTTransformer folder")
    parser.add_argument("--vae", default=None, help="a trained MelVAE folder (default: a new MelVAE)")
    stereo = parser.add_mutually_exclusive_group()
    stereo.add_argument("--mono2stereo", default=None, help="a trained Mono2Stereo folder (default: a new one)")
    stereo.add_argument("--mono", action="store_true", help="no Mono2Stereo: the pipeline returns mono audio")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new parts' random initialisation")
    parser.add_argument("--out", required=True, help="new (or empty) pipeline folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from foley_toolkit.conversion.assemble import assemble_pipeline

    pipeline = assemble_pipeline(
        vocoder=args.vocoder,
        sync_encoder=args.sync_encoder,
        vision_encoder=args.vision_encoder,
        text_encoder=args.text_encoder,
        transformer_preset=args.transformer_preset,
        transformer=args.transformer,
        vae=args.vae,
        mono2stereo=args.mono2stereo,
        stereo=not args.mono,
        output_dir=args.out,
        seed=args.seed,
    )
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            count = sum(p.numel() for p in component.parameters())
            print(f"{name:15s} {type(component).__name__:32s} {count / 1e6:9.2f}M parameters")
    print(f"Wrote the pipeline to {args.out}")
    return 0
