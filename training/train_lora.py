#!/usr/bin/env python
"""Fine-tune a Kling-Foley pipeline on your own clips with LoRA (peft) on the transformer's attention layers.

Same flow-matching objective (`foley_toolkit.training.FlowMatching`), data and options as ``train_transformer.py``
(cached features from ``extract_features.py``); only the LoRA matrices train, the base transformer stays frozen (and
in the mixed-precision dtype). The result is ``output_dir/pytorch_lora_weights.safetensors``, holding only adapter
weights (diffusers LoRA format, with the ``LoraConfig`` in its metadata)::

    pipe = KlingFoleyPipeline.from_pretrained("base-pipeline")
    pipe.load_lora_weights("output_dir")          # set_adapters / fuse_lora / unload_lora_weights work too

    accelerate launch training/train_lora.py --pretrained_model_name_or_path base-pipeline \
        --feature_dir my-features/ --output_dir my-lora --rank 16 --learning_rate 1e-4 --max_train_steps 2000 \
        --mixed_precision bf16
"""

from __future__ import annotations

import argparse
import os

import torch
from accelerate.logging import get_logger

from foley_toolkit.training import (
    FlowMatching,
    PipelineValidator,
    add_flow_matching_args,
    add_training_args,
    atomic_output,
    backward_and_step,
    build_feature_dataloader,
    build_lr_scheduler,
    build_optimizer,
    check_flow_matching_args,
    finish_training,
    init_trackers,
    load_latent_normalizer,
    log_num_parameters,
    log_run_summary,
    make_generator,
    register_checkpoint_hooks,
    resolve_max_train_steps,
    resume_from_checkpoint,
    run_training_loop,
    scale_learning_rates,
    setup_accelerator,
    unwrap_model,
)

logger = get_logger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LoRA fine-tuning of the Kling-Foley transformer.")
    add_flow_matching_args(parser)
    group = parser.add_argument_group("lora")
    group.add_argument("--rank", type=int, default=16, help="LoRA rank r.")
    group.add_argument(
        "--lora_alpha", type=float, default=None, help="LoRA alpha (scale alpha / r); defaults to the rank."
    )
    group.add_argument("--lora_dropout", type=float, default=0.0)
    group.add_argument("--lora_target_modules", type=str, default="to_q,to_k,to_v,to_out.0",
                       help="Comma-separated module names that get adapters (all attention layers by default; add "
                            "add_q_proj,add_k_proj,add_v_proj,to_add_out for the CLIP/text streams).")  # fmt: skip
    add_training_args(parser, default_learning_rate=1e-4, default_lr_scheduler="constant")
    args = parser.parse_args(input_args)
    if args.rank < 1:
        raise ValueError(f"`--rank` must be >= 1, got {args.rank}.")
    return args


def lora_config(args: argparse.Namespace):
    """The peft `LoraConfig` of ``--rank``, ``--lora_alpha`` (default: the rank), ``--lora_dropout`` and
    ``--lora_target_modules``."""
    from peft import LoraConfig

    targets = [name.strip() for name in args.lora_target_modules.split(",") if name.strip()]
    if not targets:
        raise ValueError("`--lora_target_modules` is empty.")
    return LoraConfig(
        r=args.rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.rank,
        lora_dropout=args.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def save_lora(transformer: torch.nn.Module, folder: str, weight_name: str = LORA_WEIGHT_NAME) -> str:
    """Write the adapter (and only the adapter) as ``folder/weight_name`` (``pytorch_lora_weights.safetensors``)."""
    from peft.utils import get_peft_model_state_dict

    from foley_toolkit.pipelines import KlingFoleyPipeline

    KlingFoleyPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        weight_name=weight_name,
    )
    return os.path.join(folder, weight_name)


def load_lora(transformer: torch.nn.Module, folder: str) -> None:
    """Load a checkpoint's adapter back into the (already adapted) training transformer."""
    from peft.utils import set_peft_model_state_dict

    from foley_toolkit.pipelines import KlingFoleyPipeline

    state_dict = KlingFoleyPipeline.lora_state_dict(folder, weight_name=LORA_WEIGHT_NAME)
    prefix = "transformer."
    state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    result = set_peft_model_state_dict(transformer, state_dict, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"The checkpoint's LoRA has keys this adapter does not: {unexpected[:5]}")


def main(args: argparse.Namespace) -> dict:
    from diffusers.training_utils import cast_training_params

    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer

    check_flow_matching_args(args)
    accelerator = setup_accelerator(args, find_unused_parameters=True)
    generator = make_generator(accelerator, args.seed)
    objective = FlowMatching.from_args(args)

    vae = load_latent_normalizer(args.pretrained_model_name_or_path)
    transformer = FoleyMMDiTTransformer.from_pretrained(os.path.join(args.pretrained_model_name_or_path, "transformer"))
    transformer.requires_grad_(False)
    # Frozen base weights only serve the forward pass: keep them in the mixed-precision dtype.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    transformer.to(accelerator.device, dtype=weight_dtype)
    transformer.add_adapter(lora_config(args))
    # The LoRA matrices train in fp32 whatever the base dtype.
    cast_training_params(transformer, dtype=torch.float32)
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    register_checkpoint_hooks(
        accelerator, {"transformer": transformer}, save_functions={"transformer": save_lora},
        load_functions={"transformer": load_lora},
    )  # fmt: skip

    dataset, sampler, dataloader = build_feature_dataloader(args)
    scale_learning_rates(args, accelerator)
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = build_optimizer(args, lora_parameters)
    transformer, optimizer, dataloader = accelerator.prepare(transformer, optimizer, dataloader)
    max_train_steps, steps_per_epoch = resolve_max_train_steps(args, len(dataloader))
    lr_scheduler = accelerator.prepare(build_lr_scheduler(args, optimizer, accelerator, max_train_steps))
    log_run_summary(accelerator, args, len(dataset), max_train_steps)
    log_num_parameters(unwrap_model(accelerator, transformer))
    init_trackers(accelerator, args, "train_lora")

    global_step = resume_from_checkpoint(accelerator, args, generator)
    validator = PipelineValidator(args, accelerator, transformer)

    def training_step(batch: dict, step: int) -> dict:
        loss = objective.batch_loss(
            transformer, vae, batch, generator, accelerator.device, mask_padding=args.duration_batching == "pad"
        )
        backward_and_step(accelerator, loss, lora_parameters, optimizer, lr_scheduler, args.max_grad_norm)
        return {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}

    def on_optimizer_step(step: int) -> None:
        if args.validation_steps and step % args.validation_steps == 0:
            validator(step)

    global_step, history = run_training_loop(
        accelerator, args, dataloader, sampler, training_step, [transformer], max_train_steps, steps_per_epoch,
        global_step, generator, on_optimizer_step,
    )  # fmt: skip

    accelerator.wait_for_everyone()
    lora_file = None
    if accelerator.is_main_process:
        lora_file = os.path.join(args.output_dir, LORA_WEIGHT_NAME)
        with atomic_output(lora_file) as tmp:  # a temporary name beside it, renamed when complete
            save_lora(unwrap_model(accelerator, transformer), os.path.dirname(tmp), os.path.basename(tmp))
        logger.info(f"Saved the LoRA to {lora_file}")
    finish_training(accelerator, args, "train_lora.py", args.output_dir, ["transformer (LoRA)"],
                    args.pretrained_model_name_or_path)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"global_step": global_step, "history": history, "lora_file": lora_file}


if __name__ == "__main__":
    main(parse_args())
