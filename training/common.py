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
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, gather_object, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_NAME = "training_state.json"
LOG_FILE_NAME = "train_log.jsonl"
SUMMARY_FILE_NAME = "training_summary.json"
# Key of a batch (and of a skipped example) listing the items dropped under --skip_bad_items.
BAD_ITEMS_KEY = "bad_items"
# What `--push_to_hub` never uploads from an output folder: checkpoints and temporary files.
HUB_IGNORE_PATTERNS = ["checkpoint-*", "*.tmp", "*.tmp.*", ".*.tmp*"]
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
    group.add_argument("--skip_bad_items", action="store_true",
                       help="Skip (log, count) items whose media cannot be read or whose features hold NaN/Inf, and "
                            "optimizer steps whose loss or gradient is not finite, instead of stopping the run.")  # fmt: skip
    group.add_argument("--push_to_hub", action="store_true", help="Upload the final model to the Hub at the end.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Hub repo (default: the --output_dir name).")
    group.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the stored login).")


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
    group.add_argument("--hf_data_dir", type=str, default=None,
                       help="The folder a --hf_dataset builder reads (videofolder/audiofolder: media + metadata.jsonl).")  # fmt: skip
    group.add_argument("--crop_seconds", type=float, default=default_crop_seconds, help="Length of the random training crops.")
    group.add_argument("--crop_sampling", type=str, default="uniform", choices=CROP_SAMPLINGS,
                       help="energy: half of the crops are drawn with probability proportional to their energy, so "
                            "sparse clips (short loud events on a quiet bed) show their events; uniform: anywhere.")  # fmt: skip
    group.add_argument("--segment_seconds", type=float, default=10.0, help="Clips are first cut into segments of this length.")
    group.add_argument("--min_seconds", type=float, default=0.5, help="Drop segments shorter than this.")


def build_clip_dataset(args: argparse.Namespace, **kwargs):
    """A `FoleyClipDataset` from `--data_dir` or `--hf_dataset`, with ``data_report`` (see `report_clip_plan`).

    Under ``--skip_bad_items`` the clips of a `--data_dir` whose media is missing or cannot be probed are left out
    (logged with the file and the reason, counted) instead of stopping the run.
    """
    from foley_toolkit.data import FoleyClipDataset

    if (args.data_dir is None) == (args.hf_dataset is None):
        raise ValueError("Pass exactly one of `--data_dir` and `--hf_dataset`.")
    kwargs.setdefault("seed", args.seed)
    if args.data_dir is not None:
        sources, unreadable = readable_clip_sources(args.data_dir, skip=bool(getattr(args, "skip_bad_items", False)))
        dataset = FoleyClipDataset(sources, **kwargs)
    else:
        from foley_toolkit.data import load_hf_dataset

        hf_data_dir = getattr(args, "hf_data_dir", None)  # scripts without the flag read saved folders and Hub names
        hf_dataset = load_hf_dataset(args.hf_dataset, data_dir=hf_data_dir, split=args.hf_split)
        dataset, unreadable = FoleyClipDataset.from_hf_dataset(hf_dataset, data_dir=hf_data_dir, **kwargs), []
    dataset.data_report = report_clip_plan(dataset, kwargs.get("min_seconds"), unreadable)
    return dataset


def warn_once(message: str) -> None:
    """A warning from the main process, or from this process when no accelerate state exists yet (a dataset built
    before the accelerator, as in notebooks and tests)."""
    try:
        logger.warning(message)
    except RuntimeError:
        logging.getLogger(__name__).warning(message)


def readable_clip_sources(data_dir: str | os.PathLike, skip: bool) -> tuple[list, list[dict]]:
    """`(sources, unreadable)`: the `ClipSource`s of `data_dir`'s metadata, and with `skip` the records
    ``{"id", "file", "reason"}`` of the rows left out because their media is missing or its duration cannot be read
    (without `skip` such a row raises, naming the file)."""
    from foley_toolkit.data import read_metadata, source_duration, sources_from_records

    records = read_metadata(data_dir)
    if not skip:
        return sources_from_records(records, data_dir), []
    sources, unreadable, seen = [], [], set()
    for row_index, row in enumerate(records):
        try:
            (source,) = sources_from_records([row], data_dir)
            source_duration(source)  # probes the container once (stored on the source)
        except Exception as error:  # missing file, not a media file, no stream, truncated header
            record = {"id": str(row.get("id") or row.get("file_name")), "file": str(row.get("file_name")),
                      "reason": f"{type(error).__name__}: {error}"}  # fmt: skip
            warn_once(f"Skipping unreadable clip {record['file']!r}: {record['reason']}")
            unreadable.append(record)
            continue
        if source.id in seen:  # the suffix `sources_from_records` gives a repeated id
            source.id = f"{source.id}_{row_index}"
        seen.add(source.id)
        sources.append(source)
    if not sources:
        raise ValueError(f"`--data_dir` {str(data_dir)!r}: no clip could be read ({len(unreadable)} unreadable).")
    return sources, unreadable


def report_clip_plan(dataset: Any, min_seconds: float | None, unreadable: list[dict]) -> dict[str, Any]:
    """Count (and warn once about) what the item plan drops or makes unconditional: clips (or the tails of long
    clips) shorter than ``--min_seconds``, and audio-only clips without a caption (fully unconditional items)."""
    eps = 1e-3
    covered = [0.0] * len(dataset.sources)
    for item in dataset.items:
        if item.kind in ("overlay", "sequence"):  # augmented items reuse material: not coverage
            continue
        for piece in item.pieces:
            covered[piece.source_index] += piece.duration
    dropped, tails = [], []
    for index, source in enumerate(dataset.sources):
        if covered[index] <= eps:
            dropped.append(source.id)
        elif source.duration is not None and source.duration - covered[index] > eps:
            tails.append(source.id)
    uncaptioned = [s.id for s in dataset.sources if s.video is None and not s.caption.strip()]
    if dropped:
        warn_once(f"{len(dropped)} clips are shorter than --min_seconds={min_seconds} and were dropped: "
                       f"{dropped[:10]}{' ...' if len(dropped) > 10 else ''}")  # fmt: skip
    if tails:
        warn_once(f"{len(tails)} clips lost a tail shorter than --min_seconds={min_seconds}.")
    if uncaptioned:
        warn_once(f"{len(uncaptioned)} audio-only clips have no caption: they train as fully unconditional "
                       f"items (no text, no video): {uncaptioned[:10]}{' ...' if len(uncaptioned) > 10 else ''}")  # fmt: skip
    return {
        "num_unreadable_clips": len(unreadable),
        "unreadable_clips": unreadable,
        "num_short_clips_dropped": len(dropped),
        "short_clips_dropped": dropped,
        "num_short_tails_dropped": len(tails),
        "num_uncaptioned_audio_only": len(uncaptioned),
    }


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
        guard_dataset(dataset, args), batch_sampler=sampler, collate_fn=BadItemCollate(collate_audio_crops),
        num_workers=args.dataloader_num_workers,
    )  # fmt: skip
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
    check_trackers(args.report_to)
    if getattr(args, "hub_token", None) is not None and args.report_to is not None and "wandb" in args.report_to:
        raise ValueError(
            "`--report_to wandb` with `--hub_token` would expose the token in the wandb run config: log in with "
            "`hf auth login` instead of passing `--hub_token`."
        )


def check_trackers(report_to: str | None) -> None:
    """Fail at startup when a ``--report_to`` tracker's package is missing (accelerate would only warn, and the run
    would log to nothing)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    extras = {"tensorboard": (is_tensorboard_available, "train"), "wandb": (is_wandb_available, "wandb")}
    for name in [n.strip() for n in (report_to or "").split(",") if n.strip()]:
        if name in extras and not extras[name][0]():
            raise ValueError(
                f"`--report_to {name}` needs the {name} package: `pip install foley_toolkit[{extras[name][1]}]` "
                f"(or `pip install {name}`)."
            )


def check_output_dir(output_dir: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Create `output_dir` and write (then remove) a probe file in it, so that a read-only or unwritable folder fails
    at startup with the reason, not at the first checkpoint hours later. Returns the folder."""
    import tempfile

    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe.", suffix=".tmp"):
            pass
    except OSError as error:
        raise ValueError(f"`{flag}` {str(output_dir)!r} is not a writable folder: {error.strerror or error}.") from error
    return path


# ------------------------------------------------------------------------------------------------
# Accelerator
# ------------------------------------------------------------------------------------------------


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
        from foley_toolkit.training_utils import replace_path

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


def save_pipeline_with_components(
    base_pipeline: str | os.PathLike,
    output_dir: str | os.PathLike,
    components: dict[str, torch.nn.Module],
    card: Any = None,
) -> Path:
    """Write a `KlingFoleyPipeline` folder: the base pipeline's components with `components` (name -> trained model)
    replaced, its ``model_index.json`` updated, and `card` (a `ModelCard`, see `model_card`) as ``README.md``.

    Only what loading needs is copied (the component folders, ``model_index.json``, custom pipeline code): the base
    folder's own ``README.md`` and metric files (``eval_sync.json``, ...) describe other weights and are not
    inherited. Files are copied rather than loaded, so multi-GB encoders never pass through memory; the folder is
    written under a temporary name and renamed when complete."""
    from foley_toolkit import KlingFoleyPipeline
    from foley_toolkit.training_utils import atomic_output

    base_pipeline, output_dir = Path(base_pipeline), Path(output_dir)
    index_file = base_pipeline / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"`{base_pipeline}` is not a pipeline folder (no model_index.json).")
    model_index = json.loads(index_file.read_text())
    with atomic_output(output_dir, is_dir=True) as tmp:
        tmp_dir = Path(tmp)
        for entry in base_pipeline.iterdir():
            if entry.is_dir() and entry.name in model_index and entry.name not in components:
                shutil.copytree(entry, tmp_dir / entry.name)
            elif entry.is_file() and entry.suffix == ".py":  # custom pipeline code named by model_index.json
                shutil.copy2(entry, tmp_dir / entry.name)
        for name, module in components.items():
            module.save_pretrained(tmp_dir / name)
            entry = model_index.get(name)
            if not entry or entry[0] is None or entry[1] != type(module).__name__:
                # A component the base pipeline lacked, or one of another class (a Vocos vocoder in place of
                # BigVGAN): record its class as diffusers does for a library it does not know (the module path).
                model_index[name] = [type(module).__module__, type(module).__name__]
        (tmp_dir / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
        # the re-export files diffusers' generic loader needs, for the replaced components too
        KlingFoleyPipeline.write_code_files(tmp_dir)
        if card is not None:
            (tmp_dir / "README.md").write_text(str(card), encoding="utf-8")
    return output_dir


# ------------------------------------------------------------------------------------------------
# Bad items (unreadable media, NaN/Inf features or losses) and the run summary
# ------------------------------------------------------------------------------------------------


class BadItemError(ValueError):
    """An item whose media cannot be read or whose values are not finite (without ``--skip_bad_items``)."""


class NonFiniteLossError(ValueError):
    """A loss or gradient norm holding NaN/Inf on some process; raised on every process (the check is reduced)."""


def describe_item(dataset: Any, index: int) -> tuple[str, list[str]]:
    """`(item id, files)` of item `index` of a `CachedFeatureDataset`, a `FoleyClipDataset`, a dataset with its own
    ``describe_item(index)`` or one wrapping them index for index (``.clips`` / ``.dataset``), found without loading
    the item (it may be the unreadable one)."""
    if hasattr(type(dataset), "describe_item"):
        return dataset.describe_item(index)
    entries = getattr(dataset, "entries", None)
    if entries is not None and getattr(dataset, "cache_dir", None) is not None:
        entry = entries[index]
        return str(entry.get("id", index)), [str(Path(dataset.cache_dir) / entry["file"])]
    items, sources = getattr(dataset, "items", None), getattr(dataset, "sources", None)
    if items is not None and sources is not None:
        item, files = items[index], []
        for piece in item.pieces:
            source = sources[piece.source_index]
            for media in (source.video, source.audio):
                if isinstance(media, str) and media not in files:
                    files.append(media)
        return item.id, files
    inner = getattr(dataset, "clips", None) or getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        return describe_item(inner, index)
    return str(index), []


class BadItemGuard(torch.utils.data.Dataset):
    """Wraps a dataset: an item that raises when loaded (unreadable or truncated media, a broken feature file) or
    that holds NaN/Inf in a float tensor stops the run with a `BadItemError` naming the item id, its file and the
    reason, or (`skip=True`) comes back as ``{BAD_ITEMS_KEY: [{"id", "file", "reason"}]}``, which `BadItemCollate`
    removes from the batch and `run_training_loop` logs and counts (the record travels with the batch, so it is
    counted in the training process even with dataloader workers). Other attributes (``set_epoch``, ``lengths``,
    ``items``, ...) are the wrapped dataset's."""

    def __init__(self, dataset: Any, skip: bool = False):
        self.dataset = dataset
        self.skip = skip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def check(self, index: int, example: Any = None, error: BaseException | None = None) -> dict | None:
        """The bad-item record of `index` (None when `example` is fine); raises `BadItemError` unless skipping."""
        from foley_toolkit.training_utils import non_finite_tensors

        if error is not None:
            reason = f"{type(error).__name__}: {error}"
        else:
            bad = non_finite_tensors(example) if isinstance(example, dict) else []
            if not bad:
                return None
            reason = f"non-finite values (NaN/Inf) in {', '.join(bad)}"
        item_id, files = describe_item(self.dataset, index)
        record = {"id": item_id, "file": ", ".join(files), "reason": reason}
        if not self.skip:
            raise BadItemError(
                f"Bad item {item_id!r} ({record['file'] or 'no file'}): {reason}. Fix or remove it, or pass "
                "--skip_bad_items to skip (and count) such items."
            ) from error
        return record

    def __getitem__(self, index: int) -> dict:
        try:
            example = self.dataset[index]
        except Exception as error:  # anything a decoder or a safetensors reader raises for one broken file
            return {BAD_ITEMS_KEY: [self.check(index, error=error)]}
        record = self.check(index, example)
        return example if record is None else {BAD_ITEMS_KEY: [record]}


class BadItemCollate:
    """Wraps a collate function: skipped examples (`BadItemGuard`) leave the batch, their records go to
    ``batch[BAD_ITEMS_KEY]``; a batch of only bad items is ``{BAD_ITEMS_KEY: [...]}``."""

    def __init__(self, collate_fn: Callable[[list], dict] | None = None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, examples: list[dict]) -> dict:
        bad = [record for e in examples for record in e.get(BAD_ITEMS_KEY, [])]
        good = [e for e in examples if BAD_ITEMS_KEY not in e]
        batch = self.collate_fn(good) if good else {}
        batch[BAD_ITEMS_KEY] = bad
        return batch


def guard_dataset(dataset: Any, args: argparse.Namespace) -> BadItemGuard:
    """`dataset` wrapped in a `BadItemGuard` that skips under ``--skip_bad_items``."""
    return BadItemGuard(dataset, skip=bool(getattr(args, "skip_bad_items", False)))


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


def dataset_report(dataset: Any) -> dict[str, Any]:
    """What a `FoleyClipDataset`'s plan left out or made unconditional, logged once by `build_clip_dataset`."""
    report = getattr(dataset, "data_report", None)
    if report is None:
        inner = getattr(dataset, "dataset", None) or getattr(dataset, "clips", None)
        report = dataset_report(inner) if inner is not None and inner is not dataset else {}
    return report


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
    from foley_toolkit.training_utils import atomic_write_text

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


# ------------------------------------------------------------------------------------------------
# Model cards, trackers, the Hub
# ------------------------------------------------------------------------------------------------


def model_card(args: argparse.Namespace, script: str, components: list[str], base_model: str | None = None):
    """A fresh `ModelCard` in the toolkit's shared template (`foley_toolkit.model_cards`) with this run's facts
    (script, base model, data, steps, seed, final loss, date, ...), read from the arguments and
    ``training_summary.json``; nothing comes from the base model's card. The other components come from
    `base_model`, whose card states their licences, so no licence is claimed for the whole folder."""
    import datetime

    from foley_toolkit.model_cards import ComponentCard, kling_foley_card

    summary = read_run_summary(args.output_dir)
    final = summary.get("final_logs", {})
    data = getattr(args, "data_dir", None) or getattr(args, "hf_dataset", None)
    facts = {
        "script": script,
        "base model": base_model,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": data,
        "feature cache": getattr(args, "feature_dir", None),
        "steps": summary.get("global_step"),
        "seed": args.seed,
        "final loss": f"{final['loss']:.6g}" if isinstance(final.get("loss"), (int, float)) else None,
        "learning rate": args.learning_rate,
        "batch size per device": args.train_batch_size,
        "gradient accumulation steps": args.gradient_accumulation_steps,
        "mixed precision": args.mixed_precision,
        "bad items skipped": summary.get("num_bad_items") if args.skip_bad_items else None,
    }
    trained = ", ".join(f"`{name}`" for name in components) or "the model"
    on_hub = base_model and not os.path.exists(base_model)  # the Hub's `base_model` is a repo id, not a folder
    return kling_foley_card(
        f"Kling-Foley: {trained} trained with `{script}`",
        f"This folder was written by `training/{script}` of foley_toolkit"
        + (f", starting from `{base_model}`" if base_model else "")
        + ". It holds no evaluation results: evaluate it before publishing numbers.",
        [ComponentCard(name, None, None, pretrained=False, trained_by=f"`training/{script}`") for name in components],
        facts=facts,
        base_model=[base_model] if on_hub else [],
        license=None,
        notes=[f"The other components are those of `{base_model}`: its card states their licences."]
        if base_model
        else [],
    )


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
                tracker.writer.add_audio(f"{tag}/{name}" if name else tag, audio[channel], step, sample_rate=sample_rate)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Audio(audio.numpy().T, sample_rate=sample_rate)}, step=step)


def finish_training(
    accelerator: Accelerator,
    args: argparse.Namespace,
    script: str,
    folder: str | os.PathLike,
    components: list[str],
    base_model: str | None = None,
) -> str | None:
    """The end of every script (main process): a fresh model card in `folder` when it has none (a pipeline
    written by `save_pipeline_with_components` has its own), then with ``--push_to_hub`` `folder` goes to the Hub
    (``create_repo`` + ``upload_folder``, without checkpoints and temporary files). Returns the repo id or None."""
    if not accelerator.is_main_process:
        return None
    from foley_toolkit.training_utils import atomic_write_text

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        atomic_write_text(folder / "README.md", str(model_card(args, script, components, base_model)))
    if not args.push_to_hub:
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(repo_id=args.hub_model_id or Path(args.output_dir).name, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=f"{script}: end of training",
        ignore_patterns=HUB_IGNORE_PATTERNS + [f"{args.logging_dir}/*"],
    )
    logger.info(f"Pushed {folder} to the Hub: {repo_id}")
    return repo_id


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
                [accumulated[k][-1] if k in LAST_VALUE_KEYS else sum(accumulated[k]) / len(accumulated[k]) for k in keys],
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
    from foley_toolkit.training_utils import atomic_write_text

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
