"""The skeleton every script in ``training/`` shares: arguments, accelerator setup, checkpoints, the step loop.

Each ``train_*.py`` script builds its models, data and a ``training_step(batch, step)`` function, then hands
them to `run_training_loop`. Everything a checkpoint needs (models, optimizers, LR schedulers, EMA, RNG states,
the step count) goes through `save_checkpoint` / `resume_from_checkpoint`:

- ``accelerator.save_state`` writes into ``checkpoint-N.tmp``; only once every process has finished does the main
  process ``os.replace`` it to ``checkpoint-N``. A run killed mid-write leaves a ``.tmp`` folder that
  `latest_checkpoint` ignores and the next save removes, so the last good checkpoint is never replaced by a
  partial one.
- Rotation (``--checkpoints_total_limit``) deletes old checkpoints only *after* the new one is complete.
- All randomness of a training step (noise, timesteps, condition dropout, crops) comes from one
  ``torch.Generator`` per process whose state is saved with the checkpoint, and the data order is a function of
  ``(seed, epoch)``: a resumed run skips the batches already seen (``accelerator.skip_first_batches``) and
  continues with exactly the batches and noise an uninterrupted run would have used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_NAME = "training_state.json"
LOG_FILE_NAME = "train_log.jsonl"
# Logged values that describe the optimizer step rather than a micro-batch.
LAST_VALUE_KEYS = {"lr", "stage"}


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------


def add_training_args(parser: argparse.ArgumentParser, default_learning_rate: float = 1e-4, default_lr_scheduler: str = "constant") -> None:
    """The flags every training script has (output, steps, batch, optimizer, LR schedule, precision, checkpoints)."""
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, required=True, help="Where checkpoints, logs and the final model go.")
    group.add_argument("--seed", type=int, default=0, help="Seed of the model init, data order and noise.")
    group.add_argument("--train_batch_size", type=int, default=4, help="Batch size per device (process).")
    group.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps; overrides --num_train_epochs.")
    group.add_argument("--num_train_epochs", type=int, default=1, help="Epochs, when --max_train_steps is not given.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    group.add_argument("--learning_rate", type=float, default=default_learning_rate, help="Base (peak) learning rate.")
    group.add_argument("--scale_lr", action="store_true", help="Multiply the LR by the global batch size.")
    group.add_argument(
        "--lr_scheduler",
        type=str,
        default=default_lr_scheduler,
        choices=["inverse", "constant", "constant_with_warmup", "linear", "cosine"],
        help="'inverse' is the paper's InverseLR (eq. 8); the others are diffusers' `get_scheduler`.",
    )
    group.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of the diffusers schedules.")
    group.add_argument("--lr_inv_gamma", type=float, default=1e6, help="InverseLR decay speed gamma_inv.")
    group.add_argument("--lr_power", type=float, default=0.5, help="InverseLR curvature p.")
    group.add_argument("--lr_warmup", type=float, default=0.99, help="InverseLR exponential warm-up w in [0, 1).")
    group.add_argument("--lr_final", type=float, default=0.0, help="InverseLR floor LR_final.")
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-3)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (<= 0: off).")
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Overrides the accelerate config; bf16 autocasts the forward pass, weights stay fp32.",
    )
    group.add_argument("--gradient_checkpointing", action="store_true", help="Recompute activations in backward.")
    group.add_argument("--dataloader_num_workers", type=int, default=0)
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Save a checkpoint every N steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' for the newest complete `checkpoint-N` in --output_dir.",
    )
    group.add_argument("--logging_steps", type=int, default=1, help="Log (and write train_log.jsonl) every N steps.")
    group.add_argument("--report_to", type=str, default=None, help="accelerate tracker(s): tensorboard, wandb, ...")
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the EMA of the trained weights (``--use_ema`` and diffusers `EMAModel` settings)."""
    group = parser.add_argument_group("ema")
    group.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights (diffusers EMAModel).")
    group.add_argument("--ema_decay", type=float, default=0.999, help="Maximum EMA decay.")
    group.add_argument("--ema_update_after_step", type=int, default=0)
    group.add_argument("--ema_power", type=float, default=2 / 3, help="EMA warm-up power (EMAModel).")


def add_audio_data_args(parser: argparse.ArgumentParser, default_crop_seconds: float = 2.0) -> None:
    """Flags of the audio datasets of the codec scripts (random crops of clips)."""
    from foley_toolkit.data import CROP_SAMPLINGS

    group = parser.add_argument_group("data")
    group.add_argument("--data_dir", type=str, default=None, help="Folder with metadata.jsonl/metadata.csv and the media.")
    group.add_argument("--hf_dataset", type=str, default=None, help="A 🤗 datasets name or saved folder instead of --data_dir.")
    group.add_argument("--hf_split", type=str, default="train")
    group.add_argument("--crop_seconds", type=float, default=default_crop_seconds, help="Length of the random training crops.")
    group.add_argument("--crop_sampling", type=str, default="uniform", choices=CROP_SAMPLINGS,
                       help="energy: half of the crops are drawn with probability proportional to their energy, so "
                            "sparse clips (short loud events on a quiet bed) show their events; uniform: anywhere.")  # fmt: skip
    group.add_argument("--segment_seconds", type=float, default=10.0, help="Clips are first cut into segments of this length.")
    group.add_argument("--min_seconds", type=float, default=0.5, help="Drop segments shorter than this.")


def build_clip_dataset(args: argparse.Namespace, **kwargs):
    """A `FoleyClipDataset` from `--data_dir` or `--hf_dataset`."""
    from foley_toolkit.data import FoleyClipDataset

    if (args.data_dir is None) == (args.hf_dataset is None):
        raise ValueError("Pass exactly one of `--data_dir` and `--hf_dataset`.")
    kwargs.setdefault("seed", args.seed)
    if args.data_dir is not None:
        return FoleyClipDataset.from_folder(args.data_dir, **kwargs)
    import datasets

    if os.path.isdir(args.hf_dataset):
        dataset = datasets.load_from_disk(args.hf_dataset)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[args.hf_split]
    else:
        dataset = datasets.load_dataset(args.hf_dataset, split=args.hf_split)
    return FoleyClipDataset.from_hf_dataset(dataset, **kwargs)


def build_audio_dataloader(args: argparse.Namespace, mono: bool = True):
    """`(dataset, batch_sampler, dataloader)` of random `--crop_seconds` crops (seeded by seed, epoch, index)."""
    from foley_toolkit.data import LengthGroupedBatchSampler, collate_audio_crops

    dataset = build_clip_dataset(
        args,
        segment_seconds=args.segment_seconds if args.segment_seconds and args.segment_seconds > 0 else None,
        min_seconds=args.min_seconds,
        load_video=False,
        mono=mono,
        crop_seconds=args.crop_seconds,
        crop_sampling=args.crop_sampling,
    )
    sampler = LengthGroupedBatchSampler([1] * len(dataset), args.train_batch_size, shuffle=True, seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_audio_crops, num_workers=args.dataloader_num_workers
    )
    return dataset, sampler, dataloader


def check_not_sharded(accelerator: Accelerator, script: str) -> None:
    """The codec models are small: their scripts run on one device or with DDP only."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            f"{script} supports single-device and multi-GPU (DDP) runs; FSDP/DeepSpeed configs are for the transformer."
        )


def validate_training_args(args: argparse.Namespace) -> None:
    """Clear errors for arguments every script shares."""
    positive = ["train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "logging_steps"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"`--max_train_steps` must be >= 1, got {args.max_train_steps}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"`--checkpoints_total_limit` must be >= 1, got {args.checkpoints_total_limit}.")
    if args.learning_rate <= 0:
        raise ValueError(f"`--learning_rate` must be > 0, got {args.learning_rate}.")


# ------------------------------------------------------------------------------------------------
# Accelerator
# ------------------------------------------------------------------------------------------------


def setup_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False) -> Accelerator:
    """An `Accelerator` for the script's arguments, with logging configured and the seed set.

    `find_unused_parameters` is for DDP when some parameters get no gradient in a step (e.g. the text projection
    in a batch without captions, the empty embeddings when nothing is dropped).
    """
    validate_training_args(args)
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
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
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


def scale_learning_rates(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """``--scale_lr``: multiply ``--learning_rate`` (and ``--discriminator_learning_rate`` when a script has and sets
    it) by the global batch size ``train_batch_size * num_processes * gradient_accumulation_steps``, in place."""
    if not args.scale_lr:
        return
    global_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    args.learning_rate *= global_batch_size
    if getattr(args, "discriminator_learning_rate", None) is not None:
        args.discriminator_learning_rate *= global_batch_size


def build_optimizer(args: argparse.Namespace, params: Iterable, learning_rate: float | None = None) -> torch.optim.AdamW:
    """AdamW over `params` with the ``--adam_*`` flags, at `learning_rate` (default ``--learning_rate``)."""
    return torch.optim.AdamW(
        params,
        lr=learning_rate if learning_rate is not None else args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def build_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, accelerator: Accelerator, max_train_steps: int):
    """InverseLR (paper eq. 8) or a diffusers schedule; lengths in optimizer steps.

    `accelerator.prepare` steps a scheduler `num_processes` times per optimizer step, so every schedule is
    stretched by `num_processes` (the diffusers examples do the same).
    """
    if args.lr_scheduler == "inverse":
        from foley_toolkit.training_utils import get_inverse_lr_scheduler

        return get_inverse_lr_scheduler(
            optimizer,
            inv_gamma=args.lr_inv_gamma,
            power=args.lr_power,
            warmup=args.lr_warmup,
            final_lr=args.lr_final,
            steps_per_update=accelerator.num_processes,
        )
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )


def resolve_max_train_steps(args: argparse.Namespace, num_batches_per_epoch: int) -> tuple[int, int]:
    """`(max_train_steps, num_update_steps_per_epoch)` from the prepared dataloader's length."""
    if num_batches_per_epoch < 1:
        raise ValueError(
            "The training data yields no batch on this process: use a smaller --train_batch_size or more data."
        )
    num_update_steps_per_epoch = math.ceil(num_batches_per_epoch / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * num_update_steps_per_epoch
    return max_train_steps, num_update_steps_per_epoch


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
        print(f"[{Path(sys.argv[0]).name}] num_processes={accelerator.num_processes} "
              f"global_batch_size={global_batch_size} max_train_steps={max_train_steps}", flush=True)
    return global_batch_size


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints `checkpoint-N` in `output_dir`, oldest first (``.tmp`` folders are never listed)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most `total_limit` remain; returns the deleted folders."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    removed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in removed:
        logger.info(f"Removing old checkpoint {path}")
        shutil.rmtree(path)
    return removed


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    global_step: int,
    generator: torch.Generator | None = None,
    total_limit: int | None = None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Atomically save the full training state as ``output_dir/checkpoint-{global_step}``. Call on every process.

    Writes into ``checkpoint-{global_step}.tmp`` and renames it once complete (see the module docstring).
    """
    output_dir = Path(output_dir)
    final_dir = output_dir / f"checkpoint-{global_step}"
    tmp_dir = output_dir / f"checkpoint-{global_step}.tmp"
    if accelerator.is_main_process:
        # A `.tmp` left by a run killed mid-write is garbage: start clean.
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp_dir))
    if generator is not None:
        # One file per process: each process has its own noise stream.
        save_file(
            {"state": generator.get_state()}, str(tmp_dir / f"generator_state_{accelerator.process_index}.safetensors")
        )
    if accelerator.is_main_process:
        state = {"global_step": global_step, "num_processes": accelerator.num_processes, **(extra_state or {})}
        (tmp_dir / TRAINING_STATE_NAME).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final_dir.exists():
            # Same step saved before (e.g. a run resumed and re-saved): swap it out, then drop the old copy.
            old_dir = output_dir / f"checkpoint-{global_step}.old"
            if old_dir.exists():
                shutil.rmtree(old_dir)
            os.replace(final_dir, old_dir)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(old_dir)
        else:
            os.replace(tmp_dir, final_dir)
        logger.info(f"Saved state to {final_dir}")
        rotate_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final_dir


def resolve_checkpoint_path(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The folder that `--resume_from_checkpoint` names: 'latest' (None if no checkpoint yet), a path, or a
    checkpoint name inside `output_dir`."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir() or not (path / TRAINING_STATE_NAME).is_file():
        raise FileNotFoundError(
            f"`--resume_from_checkpoint` {resume_from_checkpoint!r} is not a complete checkpoint folder "
            f"(expected a `checkpoint-N` folder holding {TRAINING_STATE_NAME})."
        )
    return path


def resume_from_checkpoint(
    accelerator: Accelerator, args: argparse.Namespace, generator: torch.Generator | None = None
) -> int:
    """Restore models, optimizers, schedulers, EMA (hooks), RNG states and the step count; returns the step
    count (0 when there is nothing to resume)."""
    path = resolve_checkpoint_path(args.output_dir, args.resume_from_checkpoint)
    if path is None:
        if args.resume_from_checkpoint:
            accelerator.print(f"No checkpoint found in {args.output_dir}: starting a new training run.")
        return 0
    accelerator.print(f"Resuming from checkpoint {path}")
    accelerator.load_state(str(path))
    state = json.loads((path / TRAINING_STATE_NAME).read_text())
    generator_file = path / f"generator_state_{accelerator.process_index}.safetensors"
    if generator is not None:
        if generator_file.is_file():
            generator.set_state(load_file(str(generator_file))["state"])
        else:
            logger.warning(
                f"{generator_file.name} is missing (saved with {state.get('num_processes')} processes, resumed with "
                f"{accelerator.num_processes}): this process continues with a fresh noise stream.",
                main_process_only=False,
            )
    return int(state["global_step"])


def register_checkpoint_hooks(
    accelerator: Accelerator,
    models: dict[str, torch.nn.Module],
    ema_models: dict[str, Any] | None = None,
    save_functions: dict[str, Callable[[torch.nn.Module, str], None]] | None = None,
    load_functions: dict[str, Callable[[torch.nn.Module, str], None]] | None = None,
) -> None:
    """Save each prepared model as a loadable subfolder of the checkpoint (``save_pretrained``), and EMA weights
    (diffusers `EMAModel.save_pretrained`, safetensors) next to them.

    Per-model folders instead of accelerate's flat ``model_N.safetensors`` keep checkpoints loadable with
    ``from_pretrained`` and resumable with a different number of processes. Under FSDP and DeepSpeed the sharded
    models are left to accelerate; EMA is still saved by the hook.

    Args:
        models: name -> the (unwrapped) module passed to `accelerator.prepare`.
        ema_models: name -> `EMAModel` tracking that module's parameters.
        save_functions / load_functions: name -> custom `(module, folder)` functions (LoRA adapters only, ...).
    """
    ema_models = ema_models or {}
    save_functions = save_functions or {}
    load_functions = load_functions or {}
    names_by_id = {id(module): name for name, module in models.items()}
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def model_name(model: torch.nn.Module) -> str:
        unwrapped = unwrap_model(accelerator, model)
        if id(unwrapped) not in names_by_id:
            raise ValueError(f"Unexpected model in the checkpoint: {unwrapped.__class__.__name__}.")
        return names_by_id[id(unwrapped)]

    def save_model_hook(prepared_models, weights, output_dir):
        if accelerator.is_main_process:
            for name, ema in ema_models.items():
                ema.save_pretrained(os.path.join(output_dir, f"{name}_ema"))
        if sharded:
            return
        for i in reversed(range(len(prepared_models))):
            name = model_name(prepared_models[i])
            if accelerator.is_main_process:
                module = unwrap_model(accelerator, prepared_models[i])
                folder = os.path.join(output_dir, name)
                if name in save_functions:
                    save_functions[name](module, folder)
                else:
                    save_module(module, folder)
            # Popped on every process: accelerate must not save these weights a second time.
            if weights:
                weights.pop(i)

    def load_model_hook(prepared_models, input_dir):
        for name, ema in ema_models.items():
            from diffusers.training_utils import EMAModel

            ema_dir = os.path.join(input_dir, f"{name}_ema")
            loaded = EMAModel.from_pretrained(ema_dir, model_cls=ema.model_cls)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
        if sharded:
            return
        while prepared_models:
            model = prepared_models.pop()
            name = model_name(model)
            module = unwrap_model(accelerator, model)
            folder = os.path.join(input_dir, name)
            if name in load_functions:
                load_functions[name](module, folder)
            else:
                load_module(module, folder)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def save_module(module: torch.nn.Module, folder: str) -> None:
    """Save `module` to `folder`: ``save_pretrained`` when it has one, else its state dict as ``model.safetensors``."""
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(folder)
    else:
        os.makedirs(folder, exist_ok=True)
        state_dict = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(state_dict, os.path.join(folder, "model.safetensors"))


def load_module(module: torch.nn.Module, folder: str) -> None:
    """Load what `save_module` wrote in `folder` into `module`, in place."""
    if hasattr(module, "save_pretrained") and hasattr(module, "from_pretrained"):
        loaded = type(module).from_pretrained(folder)
        module.load_state_dict(loaded.state_dict())
        del loaded
    else:
        module.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))


def create_ema(model: torch.nn.Module, args: argparse.Namespace):
    """A diffusers `EMAModel` of all of `model`'s parameters (saved with checkpoints by the hooks)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(
        [p for p in model.parameters()],
        decay=args.ema_decay,
        update_after_step=args.ema_update_after_step,
        use_ema_warmup=True,
        power=args.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )


def gather_model_for_saving(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """The full trained model on the main process (None elsewhere); call on every process.

    Under FSDP / DeepSpeed ZeRO-3 the parameters are sharded: the full state dict is gathered and loaded into a
    fresh copy built from the config. Otherwise this is just the unwrapped model.
    """
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state_dict = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return None
        unwrapped = unwrap_model(accelerator, model)
        fresh = type(unwrapped).from_config(unwrapped.config)
        fresh.load_state_dict(state_dict)
        return fresh
    return unwrap_model(accelerator, model) if accelerator.is_main_process else None


def save_pipeline_with_components(
    base_pipeline: str | os.PathLike, output_dir: str | os.PathLike, components: dict[str, torch.nn.Module]
) -> Path:
    """Write a `KlingFoleyPipeline` folder: the base pipeline's files with `components` (name -> trained model)
    replaced. Files are copied rather than loaded, so multi-GB encoders never pass through memory."""
    base_pipeline, output_dir = Path(base_pipeline), Path(output_dir)
    index_file = base_pipeline / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"`{base_pipeline}` is not a pipeline folder (no model_index.json).")
    tmp_dir = output_dir.with_name(output_dir.name + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    shutil.copytree(base_pipeline, tmp_dir, ignore=shutil.ignore_patterns(*components))
    model_index = json.loads(index_file.read_text())
    for name, module in components.items():
        module.save_pretrained(tmp_dir / name)
        entry = model_index.get(name)
        if not entry or entry[0] is None or entry[1] != type(module).__name__:
            # A component the base pipeline lacked, or one of another class (a Vocos vocoder in place of BigVGAN):
            # record its class as diffusers does for a library it does not know (the full module path).
            model_index[name] = [type(module).__module__, type(module).__name__]
    (tmp_dir / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(tmp_dir, output_dir)
    return output_dir


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def backward_and_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    max_grad_norm: float,
) -> None:
    """The end of every ``training_step``: ``accelerator.backward(loss)``, gradient clipping of `parameters` to
    `max_grad_norm` (``<= 0``: off) when gradients are synchronised, then ``optimizer.step()``,
    ``lr_scheduler.step()`` and ``optimizer.zero_grad()`` (prepared optimizers and schedulers only act at
    accumulation boundaries)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def run_training_loop(
    accelerator: Accelerator,
    args: argparse.Namespace,
    train_dataloader: torch.utils.data.DataLoader,
    batch_sampler: Any,
    training_step: Callable[[dict, int], dict[str, Any]],
    accumulate_models: list[torch.nn.Module],
    max_train_steps: int,
    num_update_steps_per_epoch: int,
    global_step: int = 0,
    generator: torch.Generator | None = None,
    on_optimizer_step: Callable[[int], dict[str, Any] | None] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Epochs over the prepared dataloader until `max_train_steps` optimizer steps.

    `training_step(batch, step)` runs forward, ``accelerator.backward``, clipping and ``optimizer.step()`` for one
    batch inside ``accelerator.accumulate`` (optimizers prepared by accelerate step only at accumulation
    boundaries) and returns scalars to log; `step` is the number of optimizer steps completed before it.
    `on_optimizer_step(global_step)` runs after each optimizer step (EMA update, validation) on every process.
    A checkpoint is saved every ``--checkpointing_steps`` steps and at the end.

    Returns:
        `(global_step, history)`: `history` holds the logged values of every optimizer step of this run,
        averaged over processes.
    """
    first_epoch = global_step // num_update_steps_per_epoch
    resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    num_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)
    progress_bar = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    log_path = Path(args.output_dir) / LOG_FILE_NAME
    history: list[dict[str, Any]] = []
    last_saved_step = global_step if global_step > 0 else None
    accumulated: dict[str, list[float]] = {}

    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        epoch_dataloader = train_dataloader
        if epoch == first_epoch and resume_batches > 0:
            epoch_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        # The data order (and crops) of an epoch are a function of (seed, epoch): resumed runs see the same batches.
        # accelerate's loaders re-apply their own epoch counter to the sampler when iterated: set it, then ours.
        for seeded in (epoch_dataloader, batch_sampler, getattr(train_dataloader, "dataset", None)):
            if hasattr(seeded, "set_epoch"):
                seeded.set_epoch(epoch)
        for batch in epoch_dataloader:
            with accelerator.accumulate(*accumulate_models):
                step_logs = training_step(batch, global_step)
            for key, value in step_logs.items():
                accumulated.setdefault(key, []).append(float(value))
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress_bar.update(1)
            extra_logs = on_optimizer_step(global_step) if on_optimizer_step is not None else None
            # Average the step's values over accumulation micro-batches (the learning rate and the stage are taken
            # after the optimizer step), then over processes.
            keys = sorted(accumulated)
            local = torch.tensor(
                [accumulated[k][-1] if k in LAST_VALUE_KEYS else sum(accumulated[k]) / len(accumulated[k]) for k in keys],
                device=accelerator.device,
            )
            reduced = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
            logs = {k: float(v) for k, v in zip(keys, reduced.tolist())}
            logs.update(extra_logs or {})
            accumulated = {}
            history.append({"step": global_step, **logs})
            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                progress_bar.set_postfix(**{k: f"{v:.4g}" for k, v in logs.items()})
                accelerator.log(logs, step=global_step)
                if accelerator.is_main_process:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"step": global_step, "epoch": epoch, **logs}) + "\n")
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, global_step, generator, args.checkpoints_total_limit)
                last_saved_step = global_step
            if global_step >= max_train_steps:
                break
    progress_bar.close()
    if last_saved_step != global_step:
        # The end state is always resumable (continue with a larger --max_train_steps).
        save_checkpoint(accelerator, args.output_dir, global_step, generator, args.checkpoints_total_limit)
    return global_step, history
