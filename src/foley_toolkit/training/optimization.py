"""Optimizers and learning-rate schedules of the training scripts: AdamW, the paper's InverseLR (eq. 8) and
diffusers' schedules, lengths in optimizer steps."""

from __future__ import annotations

import argparse
import math
from typing import Iterable

import torch
from accelerate import Accelerator


class InverseLRLambda:
    """Multiplier of the base learning rate for the paper's InverseLR schedule (eq. 8).

    ``LR(t) = max(LR_final, LR_base * (1 + t / inv_gamma) ** -power * (1 - warmup ** (t + 1)))``:
    an inverse (power-law) decay with a smooth exponential warm-up, floored at ``final_lr``.
    A callable object (not a closure) so that ``LambdaLR.state_dict()`` stores its numbers.

    ``steps_per_update`` divides the scheduler's step count: ``accelerator.prepare`` wraps schedulers so they step
    ``num_processes`` times per optimizer step; pass ``accelerator.num_processes`` so ``t`` counts optimizer steps.
    """

    def __init__(
        self,
        base_lr: float,
        inv_gamma: float = 1e6,
        power: float = 0.5,
        warmup: float = 0.99,
        final_lr: float = 0.0,
        steps_per_update: int = 1,
    ):
        if base_lr <= 0:
            raise ValueError(f"`base_lr` must be > 0, got {base_lr}.")
        if inv_gamma <= 0:
            raise ValueError(f"`inv_gamma` must be > 0, got {inv_gamma}.")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"`warmup` must be in [0, 1), got {warmup}.")
        if final_lr < 0:
            raise ValueError(f"`final_lr` must be >= 0, got {final_lr}.")
        if steps_per_update < 1:
            raise ValueError(f"`steps_per_update` must be >= 1, got {steps_per_update}.")
        self.base_lr = float(base_lr)
        self.inv_gamma = float(inv_gamma)
        self.power = float(power)
        self.warmup = float(warmup)
        self.final_lr = float(final_lr)
        self.steps_per_update = int(steps_per_update)

    def learning_rate(self, step: int) -> float:
        """The learning rate of eq. 8 after `step` optimizer steps."""
        decay = (1.0 + step / self.inv_gamma) ** -self.power
        warmup = 1.0 - self.warmup ** (step + 1)
        return max(self.final_lr, self.base_lr * decay * warmup)

    def __call__(self, scheduler_step: int) -> float:
        return self.learning_rate(scheduler_step // self.steps_per_update) / self.base_lr


def get_inverse_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    inv_gamma: float = 1e6,
    power: float = 0.5,
    warmup: float = 0.99,
    final_lr: float = 0.0,
    steps_per_update: int = 1,
    last_epoch: int = -1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """InverseLR (paper eq. 8) as a ``torch.optim.lr_scheduler.LambdaLR``; each parameter group decays from its
    own ``lr`` (``LR_base``) and is floored at the absolute ``final_lr``. See `InverseLRLambda`."""
    lambdas = [
        InverseLRLambda(group["lr"], inv_gamma, power, warmup, final_lr, steps_per_update)
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas, last_epoch=last_epoch)


def scale_learning_rates(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """``--scale_lr``: multiply ``--learning_rate`` (and ``--discriminator_learning_rate`` when a script has and sets
    it) by the global batch size ``train_batch_size * num_processes * gradient_accumulation_steps``, in place."""
    if not args.scale_lr:
        return
    global_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    args.learning_rate *= global_batch_size
    if getattr(args, "discriminator_learning_rate", None) is not None:
        args.discriminator_learning_rate *= global_batch_size


def build_optimizer(
    args: argparse.Namespace, params: Iterable, learning_rate: float | None = None
) -> torch.optim.AdamW:
    """AdamW over `params` with the ``--adam_*`` flags, at `learning_rate` (default ``--learning_rate``)."""
    return torch.optim.AdamW(
        params,
        lr=learning_rate if learning_rate is not None else args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def build_lr_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, accelerator: Accelerator, max_train_steps: int
):
    """InverseLR (paper eq. 8) or a diffusers schedule; lengths in optimizer steps.

    `accelerator.prepare` steps a scheduler `num_processes` times per optimizer step, so every schedule is
    stretched by `num_processes` (the diffusers examples do the same).
    """
    if args.lr_scheduler == "inverse":
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
