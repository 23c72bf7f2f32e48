"""Generate Foley sound for a video with a KlingFoleyPipeline and write the video with the audio muxed in.

    python examples/generate.py --model path/or/hub-id --video clip.mp4 --prompt "glass shatters" --out clip_foley.mp4
    python examples/generate.py --tiny --out /tmp/tiny_foley.mp4      # tiny random weights: runs anywhere, in seconds

With `--tiny` the pipeline is built from tiny random components (foley_toolkit.pipelines.kling_foley.testing) and,
without `--video`, a small synthetic test video is written next to `--out`; the sound is noise, but every stage runs.
"""

import argparse
import os
import time

import torch

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.video_processor import write_video_with_audio


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="pipeline directory (save_pretrained) or Hub repo id")
    source.add_argument("--tiny", action="store_true", help="tiny random components instead of a trained model")
    parser.add_argument("--video", help="input video (required with --model)")
    parser.add_argument("--prompt", default=None, help="optional text description of the sound")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from, e.g. 'music'")
    parser.add_argument("--steps", type=int, default=20, help="flow-matching steps")
    parser.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="output video (.mp4, .mov or .mkv)")
    args = parser.parse_args(argv)
    if args.model and not args.video:
        parser.error("--video is required with --model")
    return args


def main(args):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.tiny:
        from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components, make_test_video

        pipe = KlingFoleyPipeline(**get_dummy_components())
        if args.video is None:
            args.video = make_test_video(os.path.splitext(args.out)[0] + "_input.mp4", duration=2.0, fps=25)
    else:
        pipe = KlingFoleyPipeline.from_pretrained(args.model)
    pipe = pipe.to(args.device)

    start = time.perf_counter()
    output = pipe(
        video=args.video,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator().manual_seed(args.seed),
    )
    audio = output.audios[0]  # (channels, samples), float32 in [-1, 1]
    print(f"generated {audio.shape[0]} x {audio.shape[1]} samples at {output.sample_rate} Hz "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip

    write_video_with_audio(args.video, audio, output.sample_rate, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(parse_args())
