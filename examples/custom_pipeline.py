"""Your own pipeline from Kling-Foley's parts: a small text-to-audio DiffusionPipeline, and a scheduler swap.

    python examples/custom_pipeline.py --model path/or/hub-id --prompt "rain on a tin roof" --out rain.wav
    python examples/custom_pipeline.py --tiny --out /tmp/tiny_rain.wav   # tiny random weights, runs anywhere

`TextToFoleyPipeline` keeps only tokenizer, text_encoder, transformer, scheduler, vae and vocoder of a
`KlingFoleyPipeline` (no video encoders, mono output) and writes its own sampling loop — the whole text-to-audio
path in ~60 lines. It is a regular `DiffusionPipeline`: `save_pretrained` / `from_pretrained` / `.to()` work.
The scheduler is swapped for `FlowMatchHeunDiscreteScheduler` (2nd order) through `from_config`.
"""

import argparse

import torch
from diffusers import DiffusionPipeline, FlowMatchHeunDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from foley_toolkit import KlingFoleyPipeline, save_audio, sequence_lengths


class TextToFoleyPipeline(DiffusionPipeline):
    """Text -> mono 44.1 kHz audio with a Kling-Foley transformer, MelVAE and vocoder."""

    model_cpu_offload_seq = "text_encoder->transformer->vae->vocoder"

    def __init__(self, tokenizer, text_encoder, transformer, scheduler, vae, vocoder):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler, vae=vae,
            vocoder=vocoder,
        )  # fmt: skip

    @torch.no_grad()
    def __call__(self, prompt: str, duration: float, num_inference_steps: int = 20, guidance_scale: float = 4.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """Returns the waveform `(1, samples)` with `samples = round(duration * 44100)`."""
        device = self._execution_device
        lengths = sequence_lengths(duration)

        # 1. Text, once. The unconditional half of the guidance batch drops the text: the transformer swaps in its
        #    learned empty embedding, and the conditions are computed once for all steps.
        tokens = self.tokenizer([prompt], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        text = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        conditions = self.transformer.prepare_conditions(
            lengths["audio_tokens"],
            encoder_hidden_states=text.repeat(2, 1, 1),
            encoder_attention_mask=mask.repeat(2, 1),
            drop_text=torch.tensor([True, False], device=device),
            seconds_start=0.0,
            seconds_total=duration,
        )

        # 2. Flow matching from noise (sigma 1) to data (sigma 0) with any diffusers flow-match scheduler.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (1, self.transformer.config.in_channels, lengths["audio_tokens"])
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self.transformer(torch.cat([latents] * 2), t.expand(2), conditions=conditions).sample
            uncond, cond = velocity.chunk(2)
            latents = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample

        # 3. Latents -> mel -> waveform, trimmed to the exact length.
        mel = self.vae.decode(self.vae.denormalize_latents(latents)).sample
        waveform = self.vocoder(mel).sample[:, 0]
        return waveform[:, : lengths["num_samples"]].float().cpu()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="KlingFoleyPipeline directory or Hub repo id to take the components from")
    source.add_argument("--tiny", action="store_true", help="tiny random components instead of a trained model")
    parser.add_argument("--prompt", default="rain on a tin roof")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds")
    parser.add_argument("--steps", type=int, default=10, help="Heun steps (each costs two transformer calls)")
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .wav or .flac")
    return parser.parse_args(argv)


def main(args):
    if args.tiny:
        from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components

        components = get_dummy_components(stereo=False)
    else:
        components = KlingFoleyPipeline.from_pretrained(args.model).components
    parts = ("tokenizer", "text_encoder", "transformer", "scheduler", "vae", "vocoder")
    pipe = TextToFoleyPipeline(**{name: components[name] for name in parts})

    # Any diffusers flow-match scheduler fits: same sigma convention, configured from the saved one.
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)

    waveform = pipe(args.prompt, args.duration, args.steps, args.guidance, torch.Generator().manual_seed(args.seed))
    save_audio(args.out, waveform, 44100)
    print(f"wrote {args.out}: {waveform.shape[-1]} samples ({waveform.shape[-1] / 44100:.2f} s) with "
          f"{type(pipe.scheduler).__name__}, {len(pipe.scheduler.timesteps)} transformer calls")  # fmt: skip


if __name__ == "__main__":
    main(parse_args())
