"""Checkpoints that are atomic and resume exactly.

- ``accelerator.save_state`` writes into ``checkpoint-N.tmp``; only once every process has finished does the main
  process rename it to ``checkpoint-N``. A run killed mid-write leaves a ``.tmp`` folder that `latest_checkpoint`
  ignores and the next save removes, so the last good checkpoint is never replaced by a partial one.
- Rotation (``--checkpoints_total_limit``) deletes old checkpoints only *after* the new one is complete.
- All randomness of a training step (noise, timesteps, condition dropout, crops) comes from one
  ``torch.Generator`` per process whose state is saved with the checkpoint, and the data order is a function of
  ``(seed, epoch)``: a resumed run skips the batches already seen (``accelerator.skip_first_batches``) and
  continues with exactly the batches and noise an uninterrupted run would have used.
- Each model is saved as a loadable ``save_pretrained`` subfolder (EMA weights next to it), not accelerate's flat
  ``model_N.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from .accelerator import unwrap_model
from .outputs import replace_path

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_NAME = "training_state.json"


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
    try:
        accelerator.save_state(str(tmp_dir))
    except OSError as error:  # a full disk: say which checkpoint (the last complete one is untouched)
        raise OSError(error.errno, f"{error.strerror or error} (while writing {tmp_dir})") from error
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
        # the same step saved before (a run resumed and re-saved) is swapped out, then dropped
        replace_path(tmp_dir, final_dir)
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
