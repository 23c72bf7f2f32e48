# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""What the project's models share on top of diffusers' `ModelMixin`: LoRA through peft with a stated default target
list and safetensors-first loading ([`FoleyPeftAdapterMixin`]), and a clear error from `set_attention_backend` on
models that have no attention to route ([`AttentionFreeModelMixin`])."""

from __future__ import annotations

import os

import torch
from diffusers.loaders import PeftAdapterMixin
from diffusers.loaders.lora_base import _fetch_state_dict


_DEFAULT_PREFIX = object()  # "not given": the component's own `lora_prefix`


class FoleyPeftAdapterMixin(PeftAdapterMixin):
    r"""
    diffusers' [`~diffusers.loaders.PeftAdapterMixin`] (`add_adapter`, `load_lora_adapter`, `save_lora_adapter`,
    `set_adapters`, `fuse_lora`, `unload_lora`, ...) with three project conventions:

    - `lora_prefix`: the key prefix of this component in a pipeline LoRA file (what
      `KlingFoleyPipeline.save_lora_weights` writes: `transformer.`, `vae.`, `mono2stereo.`), used by
      `load_lora_adapter` by default;
    - `default_lora_target_modules`: the layers a LoRA adapts unless told otherwise (see each model's docstring for
      which and why); `default_lora_config` builds a peft `LoraConfig` from it;
    - `load_lora_adapter(directory)` reads the safetensors file without `weight_name=` (diffusers' own default looks
      for a pickled `.bin`), never unpickles, and raises instead of loading nothing when no key has the prefix.
    """

    lora_prefix: str = "transformer"
    default_lora_target_modules: list[str] | str = []

    @classmethod
    def default_lora_config(cls, rank: int = 16, lora_alpha: float | None = None, **kwargs):
        r"""
        A peft `LoraConfig` over `default_lora_target_modules`.

        Args:
            rank (`int`, defaults to 16): LoRA rank `r`.
            lora_alpha (`float`, *optional*): Scale numerator (`alpha / r` multiplies `B @ A`); defaults to `rank`.
            kwargs: Any other `LoraConfig` field (`lora_dropout`, `init_lora_weights`, `target_modules`, ...).
        """
        from peft import LoraConfig

        if rank < 1:
            raise ValueError(f"`rank` must be >= 1, got {rank}.")
        kwargs.setdefault("target_modules", cls.default_lora_target_modules)
        return LoraConfig(r=rank, lora_alpha=rank if lora_alpha is None else lora_alpha, **kwargs)

    def load_lora_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        prefix: str | None = _DEFAULT_PREFIX,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        [`~diffusers.loaders.PeftAdapterMixin.load_lora_adapter`], safetensors first.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): A directory (e.g. one written by
                `KlingFoleyPipeline.save_lora_weights` or `save_lora_adapter`), a Hub repo id, or a state dict.
            prefix (`str` or `None`, *optional*): Only keys starting with `f"{prefix}."` are loaded (prefix
                removed); defaults to this component's `lora_prefix`. `None` for a file written by this model's
                `save_lora_adapter` (keys without a prefix).
            hotswap (`bool`, defaults to `False`): See diffusers.
            kwargs: `weight_name`, `adapter_name`, `subfolder`, `metadata`, `low_cpu_mem_usage`, the Hub arguments, ...
                Without `weight_name`, the directory's safetensors LoRA file is read (`.bin` files are never read).
        """
        if prefix is _DEFAULT_PREFIX:
            prefix = self.lora_prefix
        if kwargs.get("use_safetensors") is False:
            raise ValueError("`use_safetensors=False`: LoRA weights are read from safetensors files only.")
        kwargs.pop("use_safetensors", None)
        weight_name = kwargs.get("weight_name")
        if weight_name is not None and not str(weight_name).endswith(".safetensors"):
            raise ValueError(f"`weight_name`: LoRA weights are read from safetensors files only, got {weight_name!r}.")
        fetch_kwargs = {
            name: kwargs.pop(name, None)
            for name in ("cache_dir", "proxies", "local_files_only", "token", "revision", "subfolder", "weight_name")
        }
        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            use_safetensors=True,
            force_download=kwargs.pop("force_download", False),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=False,  # never unpickle a LoRA file
            metadata=kwargs.pop("metadata", None),
            **fetch_kwargs,
        )
        if prefix is not None and not any(key.startswith(f"{prefix}.") for key in state_dict):
            found = sorted({key.split(".", 1)[0] for key in state_dict})
            raise ValueError(
                f"`prefix`: no LoRA key of {type(self).__name__} starts with '{prefix}.' (the keys start with "
                f"{found}); pass the component's prefix, or `prefix=None` for a file written by `save_lora_adapter`."
            )
        return super().load_lora_adapter(state_dict, prefix=prefix, hotswap=hotswap, metadata=metadata, **kwargs)


class AttentionFreeModelMixin:
    r"""
    For convolutional models (no attention layer): `set_attention_backend` raises instead of being accepted and doing
    nothing; the attention backend is a setting of the transformer (`pipe.transformer.set_attention_backend(...)`).
    """

    def set_attention_backend(self, backend: str) -> None:
        raise ValueError(
            f"`backend`: {type(self).__name__} has no attention layers (it is convolutional), so no attention backend "
            f"({backend!r}) applies to it; set it on the transformer: `pipe.transformer.set_attention_backend(...)`."
        )

    def reset_attention_backend(self) -> None:
        raise ValueError(
            f"{type(self).__name__} has no attention layers (it is convolutional); there is no attention backend to "
            "reset."
        )
