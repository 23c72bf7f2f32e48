"""Command-line arguments every training script shares, and the checks that fail early naming the flag."""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

from .flow_matching import WEIGHTING_SCHEMES


class DeprecatedAlias(argparse.Action):
    """Stores like the default action; an option string listed in `deprecated` also warns (FutureWarning) that the
    first option string is its new name. Two different values for the one destination (``--pretrained_model A
    --base_pipeline B``) are an error: one of them would be silently ignored."""

    def __init__(self, option_strings, dest, deprecated: tuple[str, ...] = (), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated = tuple(deprecated)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            warnings.warn(
                f"`{option_string}` is deprecated: use `{self.option_strings[0]}`.", FutureWarning, stacklevel=2
            )
        current = getattr(namespace, self.dest, None)
        if current is not None and current != self.default and current != values:
            parser.error(
                f"{option_string} {values!r} conflicts with {current!r} given before: {', '.join(self.option_strings)} "
                f"are one argument, pass it once ({self.option_strings[0]})."
            )
        setattr(namespace, self.dest, values)


def add_pretrained_model_args(parser: argparse.ArgumentParser, description: str, required: bool = False) -> None:
    """``--pretrained_model_name_or_path``: the pipeline a script starts from (and, for the scripts that train one
    component, the pipeline written with it in ``output_dir/pipeline``). ``--pretrained_model`` and
    ``--base_pipeline`` (the names used before; codec scripts took both) are deprecated aliases of it."""
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--pretrained_model",
        "--base_pipeline",
        dest="pretrained_model_name_or_path",
        type=str,
        default=None,
        required=required,
        action=DeprecatedAlias,
        deprecated=("--pretrained_model", "--base_pipeline"),
        help=description + " (`--pretrained_model` and `--base_pipeline` are deprecated spellings.)",
    )


def is_pipeline_folder(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a saved pipeline folder (holds ``model_index.json``)."""
    return path is not None and os.path.isfile(os.path.join(path, "model_index.json"))


def add_training_args(
    parser: argparse.ArgumentParser, default_learning_rate: float = 1e-4, default_lr_scheduler: str = "constant"
) -> None:
    """The flags every training script has (output, steps, batch, optimizer, LR schedule, precision, checkpoints)."""
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, required=True, help="Where checkpoints, logs and the final model go.")
    group.add_argument("--seed", type=int, default=0, help="Seed of the model init, data order and noise.")
    group.add_argument("--train_batch_size", type=int, default=4, help="Batch size per device (process).")
    group.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer steps; overrides --num_train_epochs."
    )
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


def add_dataset_source_args(group, media: str = "media") -> None:
    """`--data_dir` / `--hf_dataset` / `--hf_split` / `--hf_data_dir`: where the clips come from (a folder with
    metadata, or a 🤗 datasets name / saved folder). `group` is a parser or an argument group."""
    group.add_argument(
        "--data_dir", type=str, default=None, help=f"Folder with metadata.jsonl/metadata.csv and the {media}."
    )
    group.add_argument(
        "--hf_dataset", type=str, default=None, help="A 🤗 datasets name or saved folder instead of --data_dir."
    )
    group.add_argument("--hf_split", type=str, default="train")
    group.add_argument("--hf_data_dir", type=str, default=None,
                       help="The folder a --hf_dataset builder reads (videofolder/audiofolder: media + metadata.jsonl).")  # fmt: skip


def add_audio_data_args(parser: argparse.ArgumentParser, default_crop_seconds: float = 2.0) -> None:
    """Flags of the audio datasets of the codec scripts (random crops of clips)."""
    from foley_toolkit.data import CROP_SAMPLINGS

    group = parser.add_argument_group("data")
    add_dataset_source_args(group)
    group.add_argument(
        "--crop_seconds", type=float, default=default_crop_seconds, help="Length of the random training crops."
    )
    group.add_argument("--crop_sampling", type=str, default="uniform", choices=CROP_SAMPLINGS,
                       help="energy: half of the crops are drawn with probability proportional to their energy, so "
                            "sparse clips (short loud events on a quiet bed) show their events; uniform: anywhere.")  # fmt: skip
    group.add_argument(
        "--segment_seconds", type=float, default=10.0, help="Clips are first cut into segments of this length."
    )
    group.add_argument("--min_seconds", type=float, default=0.5, help="Drop segments shorter than this.")


def add_flow_matching_args(parser: argparse.ArgumentParser) -> None:
    """Flags of transformer training (full and LoRA): model, cached features, the `FlowMatching` objective,
    validation."""
    group = parser.add_argument_group("flow matching")
    add_pretrained_model_args(
        group,
        "KlingFoleyPipeline folder: its VAE normalises latents, its transformer is the starting point (unless "
        "--transformer_config), its components complete the final pipeline.",
        required=True,
    )
    group.add_argument("--feature_dir", type=str, required=True, help="Output folder of training/extract_features.py.")
    group.add_argument(
        "--text_dropout", type=float, default=0.1, help="Probability of replacing the text by its empty embedding."
    )
    group.add_argument(
        "--video_dropout",
        type=float,
        default=0.1,
        help="Probability of replacing CLIP + sync by their empty embeddings.",
    )
    group.add_argument("--weighting_scheme", type=str, default="logit_normal", choices=list(WEIGHTING_SCHEMES),
                       help="Distribution of the training noise level sigma.")  # fmt: skip
    group.add_argument("--logit_mean", type=float, default=0.0)
    group.add_argument("--logit_std", type=float, default=1.0)
    group.add_argument("--mode_scale", type=float, default=1.29)
    group.add_argument(
        "--timestep_shift", type=float, default=1.0, help="Shift of sampled sigmas towards noise (1 = none)."
    )
    group.add_argument("--duration_batching", type=str, default="bucket", choices=["bucket", "pad"],
                       help="bucket: batches of equal length; pad: mixed lengths, padded and masked in the loss.")  # fmt: skip
    group.add_argument("--validation_video", type=str, default=None, help="Video to generate audio for at validation.")
    group.add_argument("--validation_prompt", type=str, default=None, help="Prompt used at validation.")
    group.add_argument("--validation_duration", type=float, default=None, help="Seconds (required without a video).")
    group.add_argument("--validation_steps", type=int, default=None, help="Validate every N steps (and at the end).")
    group.add_argument("--num_validation_inference_steps", type=int, default=20)
    group.add_argument("--validation_guidance_scale", type=float, default=4.5)


def check_flow_matching_args(args: argparse.Namespace) -> None:
    """Fail early, naming the flag, on dropout rates outside [0, 1], a missing pipeline folder or validation without
    an input."""
    for name in ("text_dropout", "video_dropout"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"`--{name}` must be in [0, 1], got {getattr(args, name)}.")
    if not os.path.isdir(args.pretrained_model_name_or_path):
        raise FileNotFoundError(
            f"`--pretrained_model_name_or_path` {args.pretrained_model_name_or_path!r} is not a pipeline folder."
        )
    if args.validation_steps is not None and args.validation_video is None and args.validation_duration is None:
        raise ValueError("`--validation_steps` needs `--validation_video` or `--validation_duration`.")


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
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe.", suffix=".tmp"):
            pass
    except OSError as error:
        raise ValueError(
            f"`{flag}` {str(output_dir)!r} is not a writable folder: {error.strerror or error}."
        ) from error
    return path
