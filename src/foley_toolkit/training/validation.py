"""Validation during training: generate a clip with the pipeline being trained and send it to the trackers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .accelerator import unwrap_model
from .outputs import atomic_output

logger = get_logger(__name__)


def log_validation_audio(
    accelerator: Accelerator, audio: Any, sample_rate: int, step: int, tag: str = "validation"
) -> None:
    """Send a validation clip `(channels, samples)` in [-1, 1] to the ``--report_to`` trackers: TensorBoard
    (``add_audio``, one mono track per channel: TensorBoard audio is mono) and wandb (``wandb.Audio``)."""
    if not accelerator.is_main_process:
        return
    audio = torch.as_tensor(audio).detach().float().cpu().clamp(-1.0, 1.0)
    audio = audio[None] if audio.ndim == 1 else audio
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            names = ["left", "right"] if audio.shape[0] == 2 else [str(c) for c in range(audio.shape[0])]
            for channel, name in enumerate(names if audio.shape[0] > 1 else [None]):
                tracker.writer.add_audio(
                    f"{tag}/{name}" if name else tag, audio[channel], step, sample_rate=sample_rate
                )
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Audio(audio.numpy().T, sample_rate=sample_rate)}, step=step)


class PipelineValidator:
    """Generates the validation clip with the pipeline (built once, sharing the training transformer; EMA weights
    swapped in when given), writes ``output_dir/validation/step-N.wav`` (atomically) and sends it to the
    ``--report_to`` trackers. Runs on the main process; the flags are those of `add_flow_matching_args`."""

    def __init__(self, args: argparse.Namespace, accelerator: Accelerator, transformer: torch.nn.Module, ema=None):
        self.args, self.accelerator, self.transformer, self.ema = args, accelerator, transformer, ema
        self.pipe = None

    @property
    def enabled(self) -> bool:
        return self.args.validation_video is not None or self.args.validation_duration is not None

    @torch.no_grad()
    def __call__(self, global_step: int) -> str | None:
        if not self.enabled or not self.accelerator.is_main_process:
            return None
        from ..audio_utils import save_audio
        from ..pipelines import KlingFoleyPipeline

        model = unwrap_model(self.accelerator, self.transformer)
        if self.pipe is None:
            self.pipe = KlingFoleyPipeline.from_pretrained(self.args.pretrained_model_name_or_path, transformer=model)
            self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(self.accelerator.device)
        was_training = model.training
        model.eval()
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        try:
            output = self.pipe(
                video=self.args.validation_video,
                prompt=self.args.validation_prompt,
                duration=self.args.validation_duration,
                num_inference_steps=self.args.num_validation_inference_steps,
                guidance_scale=self.args.validation_guidance_scale,
                generator=torch.Generator().manual_seed(self.args.seed or 0),
            )
        finally:
            if self.ema is not None:
                self.ema.restore(model.parameters())
            model.train(was_training)
        path = Path(self.args.output_dir) / "validation" / f"step-{global_step}.wav"
        with atomic_output(path) as tmp:
            save_audio(tmp, output.audios[0], output.sample_rate)
        log_validation_audio(self.accelerator, output.audios[0], output.sample_rate, global_step)
        logger.info(f"Validation audio: {path}")
        return str(path)
