"""The step loop every training script runs: accumulation, logging, checkpoints, and what it does with bad data.

A script builds its models, data and a ``training_step(batch, step)`` that ends with `backward_and_step`, then
hands them to `run_training_loop`. The loop writes ``train_log.jsonl`` (one line per logged step) and
``training_summary.json`` (final logs, bad items, skipped batches) in ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .accelerator import unwrap_model
from .checkpointing import save_checkpoint
from .data import BAD_ITEMS_KEY, dataset_report
from .outputs import atomic_write_text

logger = get_logger(__name__)

LOG_FILE_NAME = "train_log.jsonl"
SUMMARY_FILE_NAME = "training_summary.json"
# Logged values that describe the optimizer step rather than a micro-batch.
LAST_VALUE_KEYS = {"lr", "stage"}


class NonFiniteLossError(ValueError):
    """A loss or gradient norm holding NaN/Inf on some process; raised on every process (the check is reduced)."""


def backward_and_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    max_grad_norm: float,
) -> None:
    """The end of every ``training_step``: a reduced NaN/Inf check of `loss` (`NonFiniteLossError`),
    ``accelerator.backward(loss)``, gradient clipping of `parameters` to
    `max_grad_norm` (``<= 0``: off; a non-finite norm raises `NonFiniteLossError`) when gradients are synchronised,
    then ``optimizer.step()``,
    ``lr_scheduler.step()`` and ``optimizer.zero_grad()`` (prepared optimizers and schedulers only act at
    accumulation boundaries)."""
    # A NaN/Inf loss (on any process) never reaches the weights: `run_training_loop` stops the run naming the
    # batch's items, or skips the batch under --skip_bad_items.
    check_finite(accelerator, loss, "loss")
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        if isinstance(grad_norm, torch.Tensor):
            check_finite(accelerator, grad_norm, "gradient norm")
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
    A checkpoint is saved every ``--checkpointing_steps`` steps and at the end, never of non-finite weights.

    Bad data (see `BadItemGuard`): a batch's skipped items (``batch[BAD_ITEMS_KEY]``) are logged and counted; a
    `NonFiniteLossError` from `backward_and_step` stops the run with a `ValueError` naming the step and the
    batch's item ids, or under ``--skip_bad_items`` skips that micro-batch (at an accumulation boundary the whole
    optimizer step: gradients dropped, weights, optimizer and LR schedule unchanged; ``global_step`` still counts
    it so that resumed runs stay exact). ``train_log.jsonl`` is cut back to the resumed step, then written one
    whole line per ``os.write``; ``training_summary.json`` (final logs, bad items) is written at the end.

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
    if accelerator.is_main_process:
        start_log(log_path, global_step)
    history: list[dict[str, Any]] = []
    last_saved_step = global_step if global_step > 0 else None
    accumulated: dict[str, list[float]] = {}
    health = RunHealth()
    skip_bad = bool(getattr(args, "skip_bad_items", False))
    step_counts = [0, 0]  # bad items, skipped micro-batches of the current optimizer step (this process)
    num_trained_steps = 0  # steps of this run in which some micro-batch trained

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
            bad_records = batch.pop(BAD_ITEMS_KEY, []) if isinstance(batch, dict) else []
            health.add_bad_items(bad_records)
            step_counts[0] += len(bad_records)
            usable = bool(batch)
            if skip_bad and accelerator.num_processes > 1:  # every process must skip a batch together (collectives)
                flag = torch.tensor([float(usable)], device=accelerator.device)
                usable = float(accelerator.reduce(flag, reduction="sum")) == accelerator.num_processes
            with accelerator.accumulate(*accumulate_models):
                try:
                    if not usable:
                        raise NonFiniteLossError("no usable item left in the batch on some process")
                    step_logs = training_step(batch, global_step)
                except NonFiniteLossError as error:
                    ids = batch.get("id", []) if isinstance(batch, dict) else []
                    ids = list(gather_object(list(ids))) if accelerator.num_processes > 1 else list(ids)
                    if not skip_bad:
                        raise ValueError(
                            f"Step {global_step + 1}: {error} on a batch of items {ids}. No checkpoint holds it; "
                            "find the bad item (NaN/Inf features, broken media) or lower the learning rate, or pass "
                            "--skip_bad_items to skip such batches."
                        ) from error
                    if accelerator.is_main_process:  # one global batch, whatever the number of processes
                        health.add_skipped_batch(global_step + 1, ids, str(error))
                        step_counts[1] += 1
                    if accelerator.sync_gradients:
                        # Drop the whole step: earlier micro-batches' gradients were never synchronised.
                        for optimizer in accelerator._optimizers:
                            optimizer.optimizer.zero_grad(set_to_none=True)
                    step_logs = {}
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
            num_trained_steps += bool(keys)
            local = torch.tensor(
                [
                    accumulated[k][-1] if k in LAST_VALUE_KEYS else sum(accumulated[k]) / len(accumulated[k])
                    for k in keys
                ],
                device=accelerator.device,
            )
            reduced = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
            logs = {k: float(v) for k, v in zip(keys, reduced.tolist())}
            logs.update(extra_logs or {})
            accumulated = {}
            if skip_bad:  # this step's counts, summed over processes
                counts = torch.tensor([float(c) for c in step_counts], device=accelerator.device)
                if accelerator.num_processes > 1:
                    counts = accelerator.reduce(counts, reduction="sum")
                logs["bad_items"], logs["skipped_batches"] = (float(c) for c in counts.tolist())
            step_counts = [0, 0]
            history.append({"step": global_step, **logs})
            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                progress_bar.set_postfix(**{k: f"{v:.4g}" for k, v in logs.items()})
                accelerator.log(logs, step=global_step)
                if accelerator.is_main_process:
                    append_log(log_path, {"step": global_step, "epoch": epoch, **logs})
            if global_step % args.checkpointing_steps == 0:
                check_finite_parameters(accelerator, global_step)
                save_checkpoint(accelerator, args.output_dir, global_step, generator, args.checkpoints_total_limit)
                last_saved_step = global_step
            if global_step >= max_train_steps:
                break
    progress_bar.close()
    if last_saved_step != global_step:
        # The end state is always resumable (continue with a larger --max_train_steps).
        check_finite_parameters(accelerator, global_step)
        save_checkpoint(accelerator, args.output_dir, global_step, generator, args.checkpoints_total_limit)
    report = dataset_report(getattr(train_dataloader, "dataset", None))
    summary = write_run_summary(accelerator, args, global_step, history, health, report)
    if history and num_trained_steps == 0:
        # --skip_bad_items must not turn a broken setup (every item unreadable, a bug in a training step raising on
        # every batch) into a run that "completes" without training.
        reasons = sorted({r["reason"] for r in summary["bad_items"] + summary["skipped_batches"]})[:3]
        raise ValueError(f"--skip_bad_items skipped every step of this run ({len(history)} steps): {reasons}")
    return global_step, history


def start_log(log_path: Path, global_step: int) -> None:
    """Keep only the lines of ``train_log.jsonl`` up to `global_step` (a resumed run replays the steps after its
    checkpoint: their old lines would be repeated; a fresh run starts an empty log), rewritten atomically."""
    kept = []
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash of an older version
                continue
            if entry.get("step", 0) <= global_step:
                kept.append(line + "\n")
    atomic_write_text(log_path, "".join(kept))


def append_log(log_path: Path, entry: dict[str, Any]) -> None:
    """Append one whole JSON line with a single ``os.write`` on an ``O_APPEND`` descriptor: readers see whole lines
    (the log grows every step, so it is appended rather than rewritten; `start_log` created it atomically)."""
    data = (json.dumps(entry) + "\n").encode("utf-8")
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror or error} (while writing {log_path})") from error


def check_finite(accelerator: Accelerator, value: torch.Tensor | None, what: str) -> None:
    """Raise `NonFiniteLossError` on every process when `value` holds NaN/Inf on any process (one reduction)."""
    if value is None:
        return
    finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite.to(accelerator.device), reduction="sum") - (accelerator.num_processes - 1)
    if float(finite) < 1.0:
        shown = float(value.detach().float().reshape(-1)[0]) if value.numel() else value
        where = "" if accelerator.num_processes == 1 else " on some process"
        raise NonFiniteLossError(f"non-finite {what}{where} (here: {shown})")


def check_finite_parameters(accelerator: Accelerator, global_step: int) -> None:
    """Refuse to checkpoint weights holding NaN/Inf (so rotation never deletes a good checkpoint for a bad one)."""
    bad = []
    for model in accelerator._models:
        module = unwrap_model(accelerator, model)
        for name, parameter in module.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                bad.append(f"{type(module).__name__}.{name}")
    count = torch.tensor([float(len(bad))], device=accelerator.device)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    if float(count) > 0:
        raise ValueError(
            f"Step {global_step}: {int(count)} parameter tensors hold NaN/Inf ({', '.join(bad[:5])}): no checkpoint is "
            "written and none is rotated away; resume from the last checkpoint with a lower --learning_rate."
        )


class RunHealth:
    """Bad items and skipped micro-batches of this process in `run_training_loop` (logged as they happen)."""

    def __init__(self):
        self.bad_items: list[dict] = []
        self.skipped_batches: list[dict] = []

    def add_bad_items(self, records: list[dict]) -> None:
        for record in records:
            message = f"Skipping bad item {record['id']!r} ({record['file']}): {record['reason']}"
            logger.warning(message, main_process_only=False)
        self.bad_items.extend(records)

    def add_skipped_batch(self, step: int, ids: list[str], reason: str) -> None:
        logger.warning(f"Step {step}: skipping a batch ({reason}); items {ids}", main_process_only=False)
        self.skipped_batches.append({"step": step, "ids": ids, "reason": reason})

    def gathered(self, accelerator: Accelerator) -> tuple[list[dict], list[dict]]:
        """Records of every process (call on every process)."""
        if accelerator.num_processes == 1:
            return self.bad_items, self.skipped_batches
        return gather_object(self.bad_items), gather_object(self.skipped_batches)


def read_run_summary(output_dir: str | os.PathLike) -> dict[str, Any]:
    """``output_dir/training_summary.json`` written by `run_training_loop` ({} before the first run ends)."""
    path = Path(output_dir) / SUMMARY_FILE_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_summary(
    accelerator: Accelerator,
    args: argparse.Namespace,
    global_step: int,
    history: list[dict[str, Any]],
    health: RunHealth,
    data_report: dict[str, Any],
) -> dict[str, Any]:
    """Gather the bad items of every process and write ``training_summary.json`` (main process, atomically)."""
    bad_items, skipped = health.gathered(accelerator)
    previous = read_run_summary(args.output_dir) if accelerator.is_main_process else {}
    last = {k: v for k, v in (history[-1] if history else previous.get("final_logs", {})).items() if k != "step"}
    summary = {
        "global_step": global_step,
        "seed": args.seed,
        "final_logs": last,
        "num_bad_items": len(bad_items),
        "bad_items": bad_items,
        "num_skipped_batches": len(skipped),
        "skipped_batches": skipped,
        **data_report,
    }
    if accelerator.is_main_process:
        if bad_items or skipped:
            logger.warning(f"Skipped {len(bad_items)} bad items and {len(skipped)} batches (see {SUMMARY_FILE_NAME}).")
        atomic_write_text(Path(args.output_dir) / SUMMARY_FILE_NAME, json.dumps(summary, indent=2) + "\n")
    return summary
