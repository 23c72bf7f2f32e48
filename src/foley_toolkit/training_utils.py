"""Shared training pieces: losses, schedules and timestep sampling used by the scripts in ``training/``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Codec training (MelVAE: margin KL, mel MSE, GAN, R1, Algorithm 2 stepping schedule)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Flow-matching training (transformer: logit-normal timesteps, InverseLR, condition dropout, ...)
# ---------------------------------------------------------------------------------------------
