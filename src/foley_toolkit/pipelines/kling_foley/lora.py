"""LoRA loading for [`KlingFoleyPipeline`]: a loader mixin in the pattern of diffusers' `SanaLoraLoaderMixin` /
`Lumina2LoraLoaderMixin`, for three components: the transformer, the MelVAE and the Mono2Stereo.

Everything below the pipeline level is diffusers' `PeftAdapterMixin` on each model (`load_lora_adapter`,
`set_adapters`, `fuse_lora`, `unload_lora`; the default target layers are each model's
`default_lora_target_modules`); `LoraBaseMixin` supplies `set_adapters`, `fuse_lora`, `unfuse_lora`,
`unload_lora_weights`, `disable_lora`, `delete_adapters`, ... for the components listed in `_lora_loadable_modules`.
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
VAE_NAME = "vae"
MONO2STEREO_NAME = "mono2stereo"


class KlingFoleyLoraLoaderMixin(LoraBaseMixin):
    r"""
    Load LoRA layers into the [`FoleyMMDiTTransformer`], the [`MelVAE`] and the [`Mono2Stereo`] of a
    [`KlingFoleyPipeline`].

    Files are diffusers' LoRA format: one safetensors file (default `pytorch_lora_weights.safetensors`) whose keys
    contain `lora` and start with the component's name (`transformer.`, `vae.`, `mono2stereo.`), with each
    component's peft `LoraConfig` stored in its metadata — what [`~KlingFoleyLoraLoaderMixin.save_lora_weights`]
    writes (e.g. from `training/train_lora.py`). Keys of any other component are an error, never skipped.
    """

    _lora_loadable_modules = [TRANSFORMER_NAME, VAE_NAME, MONO2STEREO_NAME]
    transformer_name = TRANSFORMER_NAME
    vae_name = VAE_NAME
    mono2stereo_name = MONO2STEREO_NAME

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
        Load a LoRA into the components its keys name (`transformer.`, `vae.`, `mono2stereo.`) as a (new) peft
        adapter of one name and activate it.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A directory, a Hub repo id, a path to the safetensors file itself, or a state dict.
            weight_name (`str`, defaults to `"pytorch_lora_weights.safetensors"`):
                File name inside the directory / repo.
            adapter_name (`str`, *optional*):
                Name of the adapter in every component it reaches; defaults to the first `default_{i}` free in all
                of them. Use distinct names to combine LoRAs with [`~KlingFoleyLoraLoaderMixin.set_adapters`].
            hotswap (`bool`, defaults to `False`):
                Replace the weights of the already loaded adapter `adapter_name` in place.

        Raises:
            `ValueError`: a key belongs to no LoRA-loadable component (e.g. `text_encoder.`), or to one the pipeline
                does not have (e.g. `mono2stereo.` keys on a mono pipeline).
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

        components = self._lora_components_of(state_dict)
        if adapter_name is None and not hotswap:
            adapter_name = self._free_adapter_name([getattr(self, name) for name in components])
        loaded = []
        try:
            for name in components:
                self.load_lora_into_component(
                    state_dict,
                    component_name=name,
                    model=getattr(self, name),
                    adapter_name=adapter_name,
                    metadata=metadata,
                    _pipeline=self,
                    low_cpu_mem_usage=low_cpu_mem_usage,
                    hotswap=hotswap,
                )
                loaded.append(name)
        except Exception:
            # All or nothing: a LoRA that fails on one component leaves no adapter on the others.
            if not hotswap:
                for name in loaded:
                    getattr(self, name).delete_adapters(adapter_name)
            raise

    def _lora_components_of(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """The components `state_dict`'s keys name, in `_lora_loadable_modules` order; a `ValueError` for keys of any
        other component or of a component this pipeline does not have."""
        prefixes = {key.split(".", 1)[0] for key in state_dict}
        unknown = sorted(prefixes - set(self._lora_loadable_modules))
        if unknown:
            raise ValueError(
                f"`pretrained_model_name_or_path_or_dict`: LoRA keys of unknown components {unknown}; a "
                f"{type(self).__name__} LoRA holds keys starting with one of {self._lora_loadable_modules} followed "
                "by '.'."
            )
        missing = sorted(name for name in prefixes if getattr(self, name, None) is None)
        if missing:
            raise ValueError(
                f"`pretrained_model_name_or_path_or_dict`: the LoRA has weights for {missing}, which this pipeline "
                "does not have (e.g. a mono pipeline without `mono2stereo`)."
            )
        return [name for name in self._lora_loadable_modules if name in prefixes]

    @staticmethod
    def _free_adapter_name(models: list) -> str:
        """peft's `default_{i}` naming, with `i` free in every model, so one LoRA has one name across components."""
        used = {name for model in models for name in getattr(model, "peft_config", {})}
        index = 0
        while f"default_{index}" in used:
            index += 1
        return f"default_{index}"

    @classmethod
    def load_lora_into_component(
        cls,
        state_dict: dict[str, torch.Tensor],
        component_name: str,
        model,
        adapter_name: str | None = None,
        _pipeline=None,
        low_cpu_mem_usage: bool = False,
        hotswap: bool = False,
        metadata: dict | None = None,
    ):
        """Load the `f"{component_name}."`-prefixed part of `state_dict` into `model` with `load_lora_adapter`."""
        logger.info(f"Loading {component_name}.")
        model.load_lora_adapter(
            state_dict,
            prefix=component_name,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_transformer(cls, state_dict: dict[str, torch.Tensor], transformer, **kwargs):
        """Load the `transformer.`-prefixed part of `state_dict` into `transformer` (diffusers' loader API)."""
        cls.load_lora_into_component(state_dict, cls.transformer_name, transformer, **kwargs)

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
        vae_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
        vae_lora_adapter_metadata: dict | None = None,
        mono2stereo_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
        mono2stereo_lora_adapter_metadata: dict | None = None,
    ):
        r"""
        Save the LoRA layers of the transformer, the VAE and/or the Mono2Stereo into one file that
        [`~KlingFoleyLoraLoaderMixin.load_lora_weights`] loads (keys prefixed `transformer.`, `vae.`, `mono2stereo.`).

        Args:
            save_directory (`str` or `os.PathLike`):
                Directory to write `weight_name` (default `pytorch_lora_weights.safetensors`) into.
            transformer_lora_layers (`dict`):
                The LoRA state dict of the transformer, e.g. `peft.get_peft_model_state_dict(transformer)`.
            transformer_lora_adapter_metadata (`dict`, *optional*):
                The adapter's `LoraConfig.to_dict()`; stored in the file so that loading recreates the same rank,
                alpha and target modules.
            vae_lora_layers, mono2stereo_lora_layers (`dict`, *optional*):
                The LoRA state dicts of the MelVAE and the Mono2Stereo (`get_peft_model_state_dict(model)`).
            vae_lora_adapter_metadata, mono2stereo_lora_adapter_metadata (`dict`, *optional*):
                Their `LoraConfig.to_dict()`.
        """
        layers = {
            cls.transformer_name: transformer_lora_layers,
            cls.vae_name: vae_lora_layers,
            cls.mono2stereo_name: mono2stereo_lora_layers,
        }
        metadata = {
            cls.transformer_name: transformer_lora_adapter_metadata,
            cls.vae_name: vae_lora_adapter_metadata,
            cls.mono2stereo_name: mono2stereo_lora_adapter_metadata,
        }
        for name in layers:
            if layers[name] is not None and len(layers[name]) == 0:
                raise ValueError(f"`{name}_lora_layers` is empty; pass the component's LoRA state dict or None.")
            if layers[name] is None and metadata[name] is not None:
                raise ValueError(f"`{name}_lora_adapter_metadata` given without `{name}_lora_layers`.")
        if all(value is None for value in layers.values()):
            raise ValueError(
                "Nothing to save: pass at least one of `transformer_lora_layers`, `vae_lora_layers`, "
                "`mono2stereo_lora_layers` (a non-empty LoRA state dict)."
            )

        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={name: value for name, value in layers.items() if value is not None},
            lora_metadata={name: metadata[name] for name, value in layers.items() if value is not None},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def _components_with_lora(self) -> list[str]:
        """The LoRA-loadable components that hold at least one adapter."""
        return [name for name in self._lora_loadable_modules if getattr(self.components.get(name), "peft_config", {})]

    def fuse_lora(
        self,
        components: list[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ):
        r"""
        Merge the active LoRA weights into the base weights (`W += lora_scale * B @ A`) of `components` (default:
        every component holding a LoRA; `["transformer"]` if none does).
        """
        if components is None:
            components = self._components_with_lora() or [self.transformer_name]
        super().fuse_lora(
            components=components,
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: list[str] | None = None, **kwargs):
        r"""Undo [`~KlingFoleyLoraLoaderMixin.fuse_lora`]: subtract the merged LoRA weights again (default: in every
        component holding a LoRA)."""
        if components is None:
            components = self._components_with_lora() or [self.transformer_name]
        super().unfuse_lora(components=components, **kwargs)
