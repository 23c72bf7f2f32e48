"""The end of a run: the trained pipeline folder (``save_pretrained``), its fresh model card, and the Hub upload."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .loop import read_run_summary
from .outputs import atomic_output, atomic_write_text

logger = get_logger(__name__)

# What `--push_to_hub` never uploads from an output folder: checkpoints and temporary files.
HUB_IGNORE_PATTERNS = ["checkpoint-*", "*.tmp", "*.tmp.*", ".*.tmp*"]


def save_trained_pipeline(
    pretrained_model_name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    components: dict[str, torch.nn.Module],
    card: Any = None,
) -> Path:
    """Write a `KlingFoleyPipeline` folder: the pipeline `pretrained_model_name_or_path` with `components` (name ->
    trained model) in place of its own, saved with ``save_pretrained`` (which writes ``model_index.json`` and the
    code files of `KlingFoleyPipeline.write_code_files`) and `card` (a fresh `ModelCard`, see `model_card`) as
    ``README.md``.

    Nothing else of the base folder is carried over: its ``README.md`` and metric files (``eval_sync.json``, ...)
    describe other weights. The folder is written under a temporary name and renamed when complete."""
    from ..pipelines import KlingFoleyPipeline

    pipe = KlingFoleyPipeline.from_pretrained(pretrained_model_name_or_path, **components)
    with atomic_output(output_dir, is_dir=True) as tmp:
        pipe.save_pretrained(tmp)
        if card is not None:
            Path(tmp, "README.md").write_text(str(card), encoding="utf-8")
    return Path(output_dir)


def model_card(args: argparse.Namespace, script: str, components: list[str], base_model: str | None = None):
    """A fresh `ModelCard` in the toolkit's shared template (`foley_toolkit.model_cards`) with this run's facts
    (script, base model, data, steps, seed, final loss, date, ...), read from the arguments and
    ``training_summary.json``; nothing comes from the base model's card. The other components come from
    `base_model`, whose card states their licences, so no licence is claimed for the whole folder."""
    import datetime

    from ..model_cards import ComponentCard, kling_foley_card

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


def finish_training(
    accelerator: Accelerator,
    args: argparse.Namespace,
    script: str,
    folder: str | os.PathLike,
    components: list[str],
    base_model: str | None = None,
) -> str | None:
    """The end of every script (main process): a fresh model card in `folder` when it has none (a pipeline
    written by `save_trained_pipeline` has its own), then with ``--push_to_hub`` `folder` goes to the Hub
    (``create_repo`` + ``upload_folder``, without checkpoints and temporary files). Returns the repo id or None."""
    if not accelerator.is_main_process:
        return None
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
