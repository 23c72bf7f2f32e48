"""Kling-Foley's sampling schedule on top of diffusers' flow-match schedulers."""

from .scheduling_kling_foley import (
    calculate_shift,
    kling_foley_mu,
    kling_foley_sigmas,
    retrieve_kling_foley_timesteps,
    retrieve_timesteps,
    shift_sigmas,
)

__all__ = [
    "calculate_shift",
    "kling_foley_mu",
    "kling_foley_sigmas",
    "retrieve_kling_foley_timesteps",
    "retrieve_timesteps",
    "shift_sigmas",
]
