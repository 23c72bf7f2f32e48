"""LoRA loading for [`KlingFoleyPipeline`]: a transformer-only loader mixin in the pattern of diffusers'
`SanaLoraLoaderMixin` / `Lumina2LoraLoaderMixin`.

Everything below the pipeline level is diffusers' `PeftAdapterMixin` on [`FoleyMMDiTTransformer`]
(`load_lora_adapter`, `set_adapters`, `fuse_lora`, `unload_lora`); `LoraBaseMixin` supplies `set_adapters`,
`fuse_lora`, `unfuse_lora`, `unload_lora_weights`, `disable_lora`, `delete_adapters`, ... for the components listed
in `_lora_loadable_modules`.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE, LoraBaseMixin, _fetch_state_dict
from diffusers.utils import logging, require_peft_backend
from huggingface_hub.utils import validate_hf_hub_args


logger = logging.get_logger(__name__)

TRANSFORMER_NAME = "transformer"


class KlingFoleyLoraLoaderMixin(LoraBaseMixin):
    r"""
    Load LoRA layers into the [`FoleyMMDiTTransformer`] of a [`KlingFoleyPipeline`].

    Files are diffusers' LoRA format: one safetensors file (default `pytorch_lora_weights.safetensors`) whose keys
    start with `transformer.` and contain `lora`, with the peft `LoraConfig` stored in its metadata — what
    `training/train_lora.py` writes through [`~KlingFoleyLoraLoaderMixin.save_lora_weights`].
    """

    _lora_loadable_modules = ["transformer"]
    transformer_name = TRANSFORMER_NAME

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        **kwargs,
    ):
        r"""
        Return the LoRA state dict (and with `return_lora_metadata=True` its adapter metadata) from a local
        directory, a Hub repo id or an in-memory dict. Only safetensors files are read.
        """
        cache_dir = kwargs.pop("cache_dir", None)
        force_download = kwargs.pop("force_download", False)
        proxies = kwargs.pop("proxies", None)
        local_files_only = kwargs.pop("local_files_only", None)
        token = kwargs.pop("token", None)
        revision = kwargs.pop("revision", None)
        subfolder = kwargs.pop("subfolder", None)
        weight_name = kwargs.pop("weight_name", LORA_WEIGHT_NAME_SAFE)
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        kwargs.pop("use_safetensors", None)

        if isinstance(pretrained_model_name_or_path_or_dict, (str, os.PathLike)):
            path = os.fspath(pretrained_model_name_or_path_or_dict)
            looks_local = os.path.isabs(path) or path.startswith(".") or path.count("/") != 1
            if looks_local and not os.path.exists(path):
                raise FileNotFoundError(
                    f"`pretrained_model_name_or_path_or_dict`: no LoRA directory or file at {path!r} (expected a "
                    "directory holding a safetensors LoRA file, or a Hub repo id 'owner/name')."
                )
            if os.path.isfile(path):
                # A file path works as well: split it into its directory and file name.
                weight_name = os.path.basename(path)
                pretrained_model_name_or_path_or_dict = os.path.dirname(path) or "."
            elif os.path.isdir(path) and not os.path.isfile(os.path.join(path, subfolder or "", weight_name)):
                raise FileNotFoundError(
                    f"`weight_name`: {weight_name!r} not found in {os.path.join(path, subfolder or '')!r}; pass "
                    "`weight_name=` with the LoRA file's name."
                )

        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            weight_name=weight_name,
            use_safetensors=True,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            force_download=force_download,
            proxies=proxies,
            token=token,
            revision=revision,
            subfolder=subfolder,
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            # Weights only through safetensors: never unpickle a LoRA file.
            allow_pickle=False,
        )

        if any("dora_scale" in k for k in state_dict):
            logger.warning("DoRA scales are not supported and are dropped from the LoRA state dict.")
            state_dict = {k: v for k, v in state_dict.items() if "dora_scale" not in k}

        return (state_dict, metadata) if return_lora_metadata else state_dict

    @require_peft_backend
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        weight_name: str = LORA_WEIGHT_NAME_SAFE,
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        Load a LoRA into `self.transformer` as a (new) peft adapter and activate it.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A directory, a Hub repo id, a path to the safetensors file itself, or a state dict.
            weight_name (`str`, defaults to `"pytorch_lora_weights.safetensors"`):
                File name inside the directory / repo.
            adapter_name (`str`, *optional*):
                Name of the adapter; defaults to peft's `default_{i}`. Use distinct names to combine LoRAs with
                [`~KlingFoleyLoraLoaderMixin.set_adapters`].
            hotswap (`bool`, defaults to `False`):
                Replace the weights of the already loaded adapter `adapter_name` in place.
        """
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)

        # A dict is copied rather than modified in place.
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()

        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, weight_name=weight_name, **kwargs
        )
        if len(state_dict) == 0 or not all("lora" in key for key in state_dict):
            raise ValueError(
                "`pretrained_model_name_or_path_or_dict`: invalid LoRA checkpoint; every parameter name must contain "
                "'lora' (diffusers/peft LoRA format)."
            )

        self.load_lora_into_transformer(
            state_dict,
            transformer=getattr(self, self.transformer_name),
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict: dict[str, torch.Tensor],
        transformer,
        adapter_name: str | None = None,
        _pipeline=None,
        low_cpu_mem_usage: bool = False,
        hotswap: bool = False,
        metadata: dict | None = None,
    ):
        """Load the `transformer.`-prefixed part of `state_dict` into `transformer` with `load_lora_adapter`."""
        logger.info(f"Loading {cls.transformer_name}.")
        transformer.load_lora_adapter(
            state_dict,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, torch.nn.Module | torch.Tensor] = None,
        is_main_process: bool = True,
        weight_name: str = None,
        save_function: Callable = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: dict | None = None,
    ):
        r"""
        Save transformer LoRA layers so that [`~KlingFoleyLoraLoaderMixin.load_lora_weights`] can load them.

        Args:
            save_directory (`str` or `os.PathLike`):
                Directory to write `weight_name` (default `pytorch_lora_weights.safetensors`) into.
            transformer_lora_layers (`dict`):
                The LoRA state dict of the transformer, e.g. `peft.get_peft_model_state_dict(transformer)`.
            transformer_lora_adapter_metadata (`dict`, *optional*):
                The adapter's `LoraConfig.to_dict()`; stored in the file so that loading recreates the same rank,
                alpha and target modules.
        """
        if not transformer_lora_layers:
            raise ValueError("`transformer_lora_layers` must be a non-empty LoRA state dict of the transformer.")

        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.transformer_name: transformer_lora_layers},
            lora_metadata={cls.transformer_name: transformer_lora_adapter_metadata},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def fuse_lora(
        self,
        components: list[str] = ["transformer"],
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ):
        r"""Merge the active LoRA weights into the transformer's base weights (`W += lora_scale * B @ A`)."""
        super().fuse_lora(
            components=components,
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: list[str] = ["transformer"], **kwargs):
        r"""Undo [`~KlingFoleyLoraLoaderMixin.fuse_lora`]: subtract the merged LoRA weights again."""
        super().unfuse_lora(components=components, **kwargs)
