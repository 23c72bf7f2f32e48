#!/usr/bin/env python
"""Train `FoleyMMDiTTransformer` with flow matching on cached features (paper Algorithm 1, section 6.2).

The objective is `foley_toolkit.training.FlowMatching` (diffusers' `FlowMatchEulerDiscreteScheduler` convention,
logit-normal noise levels): ``x_t = (1 - sigma) * x0 + sigma * noise``, the model predicts ``v = noise - x0`` at
``timestep = sigma * 1000``. Text and video are dropped independently (default 10% each) to the transformer's learned
empty embeddings, which also makes the network usable with any subset of modalities and gives classifier-free
guidance its null condition. Items without a caption or without video always use the empty embedding for it.

Durations: ``--duration_batching bucket`` (default) batches only items with the same number of latent frames, so
nothing is padded; ``pad`` batches any items, pads to the longest and masks the padded frames out of the loss
(the padded frames still take part in attention, since the transformer has no audio padding mask).

    accelerate launch --config_file training/configs/multi_gpu.yaml training/train_transformer.py \
        --pretrained_model_name_or_path base-pipeline --feature_dir features/ --output_dir runs/foley \
        --train_batch_size 16 --max_train_steps 200000 --mixed_precision bf16 --use_ema --gradient_checkpointing
"""

from __future__ import annotations

import argparse
import json
import os

from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from foley_toolkit.training import (
    FlowMatching,
    PipelineValidator,
    add_ema_args,
    add_flow_matching_args,
    add_training_args,
    atomic_save_pretrained,
    backward_and_step,
    build_feature_dataloader,
    build_lr_scheduler,
    build_optimizer,
    check_flow_matching_args,
    create_ema,
    finish_training,
    gather_model_for_saving,
    init_trackers,
    load_latent_normalizer,
    log_num_parameters,
    log_run_summary,
    make_generator,
    model_card,
    register_checkpoint_hooks,
    resolve_max_train_steps,
    resume_from_checkpoint,
    run_training_loop,
    save_trained_pipeline,
    scale_learning_rates,
    setup_accelerator,
    unwrap_model,
)

logger = get_logger(__name__)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flow-matching training of FoleyMMDiTTransformer on cached features.")
    add_flow_matching_args(parser)
    parser.add_argument("--transformer_config", type=str, default=None,
                        help="Train from scratch: a preset name (small, kling-foley-1.5b, -3b, -6b) or a config JSON file.")  # fmt: skip
    add_training_args(parser, default_learning_rate=1e-4, default_lr_scheduler="inverse")
    add_ema_args(parser)
    return parser.parse_args(input_args)


def load_transformer(args: argparse.Namespace):
    """The transformer to train: the pipeline's, or a new one from ``--transformer_config`` (a JSON file or a preset
    name)."""
    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer

    if args.transformer_config is None:
        return FoleyMMDiTTransformer.from_pretrained(os.path.join(args.pretrained_model_name_or_path, "transformer"))
    if os.path.isfile(args.transformer_config):
        with open(args.transformer_config, encoding="utf-8") as f:
            config = json.load(f)
    else:
        config = FoleyMMDiTTransformer.preset_config(args.transformer_config)
    return FoleyMMDiTTransformer.from_config(config)


def main(args: argparse.Namespace) -> dict:
    check_flow_matching_args(args)
    accelerator = setup_accelerator(args, find_unused_parameters=True)
    generator = make_generator(accelerator, args.seed)
    objective = FlowMatching.from_args(args)

    vae = load_latent_normalizer(args.pretrained_model_name_or_path)
    transformer = load_transformer(args)
    dataset, sampler, dataloader = build_feature_dataloader(args)
    # The longest clip trained on goes in the config (before the EMA copies it): `window_seconds="auto"` generates
    # longer videos in windows of this length. A fine-tuned model keeps the longer of its old and new lengths.
    trained_seconds = max(float(entry["duration"]) for entry in dataset.entries)
    transformer.register_to_config(trained_seconds=max(trained_seconds, transformer.config.trained_seconds or 0.0))
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    ema = None
    if args.use_ema:
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError(
                "`--use_ema` is not supported with FSDP (sharded parameters); use DDP or DeepSpeed ZeRO-2."
            )
        ema = create_ema(transformer, args)
        ema.to(accelerator.device)
    register_checkpoint_hooks(accelerator, {"transformer": transformer}, {"transformer": ema} if ema else None)

    scale_learning_rates(args, accelerator)
    optimizer = build_optimizer(args, [p for p in transformer.parameters() if p.requires_grad])
    transformer, optimizer, dataloader = accelerator.prepare(transformer, optimizer, dataloader)
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    lr_scheduler = accelerator.prepare(build_lr_scheduler(args, optimizer, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    log_num_parameters(unwrap_model(accelerator, transformer))
    init_trackers(accelerator, args, "train_transformer")

    global_step = resume_from_checkpoint(accelerator, args, generator)
    validator = PipelineValidator(args, accelerator, transformer, ema)
    trainable = [p for p in transformer.parameters() if p.requires_grad]

    def training_step(batch: dict, step: int) -> dict:
        loss = objective.batch_loss(
            transformer, vae, batch, generator, accelerator.device, mask_padding=args.duration_batching == "pad"
        )
        backward_and_step(accelerator, loss, trainable, optimizer, lr_scheduler, args.max_grad_norm)
        return {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}

    def on_optimizer_step(step: int) -> None:
        if ema is not None:
            ema.step(unwrap_model(accelerator, transformer).parameters())
        if args.validation_steps and step % args.validation_steps == 0:
            validator(step)

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [transformer], max_train_steps, steps_per_epoch,
        global_step, generator, on_optimizer_step,
    )  # fmt: skip

    # Final model: trained weights in output_dir/transformer, and a full pipeline (EMA weights when enabled).
    accelerator.wait_for_everyone()
    model = gather_model_for_saving(accelerator, transformer)
    pipeline_dir = None
    if accelerator.is_main_process:
        atomic_save_pretrained(model, os.path.join(args.output_dir, "transformer"))
        if ema is not None:
            atomic_save_pretrained(ema, os.path.join(args.output_dir, "transformer_ema"))
            ema.copy_to(model.parameters())
        card = model_card(args, "train_transformer.py", ["transformer"], args.pretrained_model_name_or_path)
        pipeline_dir = save_trained_pipeline(
            args.pretrained_model_name_or_path, os.path.join(args.output_dir, "pipeline"), {"transformer": model}, card
        )
        logger.info(f"Saved the trained pipeline to {pipeline_dir}")
        if validator.enabled and args.validation_steps and global_step % args.validation_steps != 0:
            validator(global_step)
    finish_training(accelerator, args, "train_transformer.py", pipeline_dir or args.output_dir, ["transformer"],
                    args.pretrained_model_name_or_path)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "global_step": global_step,
        "history": history,
        "num_processes": accelerator.num_processes,
        "pipeline_dir": str(pipeline_dir) if pipeline_dir else None,
    }


if __name__ == "__main__":
    main(parse_args())
