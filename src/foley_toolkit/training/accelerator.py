"""The `Accelerator` of a training run and what goes with it: logging, trackers, the per-process generator that
drives every random draw of a step, and unwrapping prepared models."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed

from .args import check_output_dir, validate_training_args

logger = get_logger(__name__)


def setup_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False) -> Accelerator:
    """An `Accelerator` for the script's arguments, with logging configured and the seed set.

    `find_unused_parameters` is for DDP when some parameters get no gradient in a step (e.g. the text projection
    in a batch without captions, the empty embeddings when nothing is dropped).
    """
    validate_training_args(args)
    # Before the accelerator: its trackers create folders in --output_dir.
    check_output_dir(args.output_dir)
    project_config = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=project_config,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if args.seed is not None:
        # Model init is identical on every process; per-process randomness uses `make_generator`.
        set_seed(args.seed)
    return accelerator


def init_trackers(accelerator: Accelerator, args: argparse.Namespace, project_name: str) -> None:
    """Start the ``--report_to`` trackers (main process) with the scalar flags as the run's config; without this,
    ``accelerator.log`` in `run_training_loop` reaches no tracker."""
    if accelerator.is_main_process:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project_name, config=config)


def make_generator(accelerator: Accelerator, seed: int | None) -> torch.Generator:
    """The per-process generator that drives all the randomness of training steps (saved in checkpoints)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed or 0) * 1000 + accelerator.process_index)
    return generator


def unwrap_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The bare module behind accelerate's wrappers (DDP, ``torch.compile``)."""
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


def check_not_sharded(accelerator: Accelerator, script: str) -> None:
    """The codec models are small: their scripts run on one device or with DDP only."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            f"{script} supports single-device and multi-GPU (DDP) runs; FSDP/DeepSpeed configs are for the transformer."
        )


def log_run_summary(accelerator: Accelerator, args: argparse.Namespace, num_examples: int, max_train_steps: int) -> int:
    """Log the numbers that describe the run; returns the global batch size."""
    global_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lines = [
        "***** Running training *****",
        f"  num_examples = {num_examples}",
        f"  num_processes = {accelerator.num_processes}",
        f"  distributed_type = {accelerator.distributed_type}",
        f"  mixed_precision = {accelerator.mixed_precision}",
        f"  batch size per device = {args.train_batch_size}",
        f"  gradient_accumulation_steps = {args.gradient_accumulation_steps}",
        f"  global batch size (per device x processes x accumulation) = {global_batch_size}",
        f"  max_train_steps = {max_train_steps}",
    ]
    for line in lines:
        logger.info(line)
    if accelerator.is_main_process:
        # Also on stdout: launchers (torchrun) and users without logging configured still see the global batch.
        print(
            f"[{Path(sys.argv[0]).name}] num_processes={accelerator.num_processes} "
            f"global_batch_size={global_batch_size} max_train_steps={max_train_steps}",
            flush=True,
        )
    return global_batch_size


def log_num_parameters(model: torch.nn.Module) -> None:
    """Log total and trainable parameter counts of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"  parameters: {total / 1e6:.2f}M, trainable: {trainable / 1e6:.4f}M")
