# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""Kling-Foley video/text-to-audio pipeline (arXiv 2506.19774), in the shape of diffusers' `StableAudioPipeline`."""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MMAudioVocoder
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModelWithProjection, T5EncoderModel, T5Tokenizer, T5TokenizerFast

from ...audio_utils import HOP_LENGTH, SAMPLE_RATE, sequence_lengths
from ...models.autoencoders.autoencoder_mel_vae import MelVAE
from ...models.encoders.synchformer import SynchformerEncoder
from ...models.mono2stereo import Mono2Stereo
from ...models.transformers.transformer_foley_mmdit import FoleyMMDiTConditions, FoleyMMDiTTransformer
from ...models.vocoder import vocoder_hop_length
from ...models.vocoder_vocos import VocosVocoder
from ...schedulers import retrieve_kling_foley_timesteps
from ...utils.video_io import VideoInput, load_video
from ...video_processor import FoleyVideoProcessor
from . import long_form
from .lora import KlingFoleyLoraLoaderMixin
from .pipeline_output import KlingFoleyPipelineOutput


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import soundfile as sf
        >>> import torch
        >>> from foley_toolkit import KlingFoleyPipeline
        >>> from foley_toolkit.utils.video_io import write_video_with_audio

        >>> pipe = KlingFoleyPipeline.from_pretrained("path/or/hub-id")
        >>> generator = torch.Generator().manual_seed(0)
        >>> out = pipe(
        ...     video="clip.mp4",
        ...     prompt="glass shatters on a tiled floor",
        ...     negative_prompt="music",
        ...     generator=generator,
        ... )
        >>> out.audios.shape  # (batch, channels, samples)
        (1, 2, 352800)
        >>> sf.write("clip_foley.wav", out.audios[0].T, out.sample_rate)
        >>> write_video_with_audio("clip.mp4", out.audios[0], out.sample_rate, "clip_foley.mp4")
        ```
"""

VideoLike = str | os.PathLike | bytes | np.ndarray | torch.Tensor | VideoInput


def _only_imports_foley_toolkit(path: str) -> bool:
    """Whether a Python file holds nothing but `from foley_toolkit... import Name` statements, string literals and
    an `__all__` list: running it runs only the installed package."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    package = __name__.split(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            ok = node.level == 0 and (node.module or "").split(".")[0] == package
            ok = ok and all(alias.name != "*" for alias in node.names)
        elif isinstance(node, ast.Expr):
            ok = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        elif isinstance(node, ast.Assign):
            ok = [ast.unparse(t) for t in node.targets] == ["__all__"] and isinstance(node.value, (ast.List, ast.Tuple))
            ok = ok and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)
        else:
            ok = False
        if not ok:
            return False
    return True


class KlingFoleyPipeline(DiffusionPipeline, KlingFoleyLoraLoaderMixin):
    r"""
    Pipeline for video-to-audio, text-to-audio and text+video-to-audio generation with Kling-Foley.

    A flow-matching MM-DiT ([`FoleyMMDiTTransformer`]) generates MelVAE latents conditioned on T5 text embeddings,
    CLIP frame features (8 fps) and Synchformer sync features (25 fps); the MelVAE decodes them to a mono mel
    spectrogram, [`Mono2Stereo`] (optional) predicts the left and right mels, and a BigVGAN vocoder turns each channel
    into a 44.1 kHz waveform.

    This model inherits from [`DiffusionPipeline`] (saving, loading, devices, offloading, progress bar) and
    [`KlingFoleyLoraLoaderMixin`] (`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`,
    `unload_lora_weights`, `save_lora_weights`).

    Args:
        tokenizer ([`~transformers.T5Tokenizer`] or [`~transformers.T5TokenizerFast`]):
            Tokenizer of the text encoder.
        text_encoder ([`~transformers.T5EncoderModel`]):
            Frozen T5-Base encoder (768-d token embeddings).
        vision_encoder ([`~transformers.CLIPVisionModelWithProjection`]):
            Frozen MetaCLIP ViT-bigG-14 image encoder; its `image_embeds` (1280-d) are the per-frame CLIP features.
        sync_encoder ([`SynchformerEncoder`]):
            Frozen Synchformer video encoder producing 8 tokens x 768 per 16-frame segment at 25 fps.
        transformer ([`FoleyMMDiTTransformer`]):
            The flow network predicting the velocity `noise - x0` of the normalised latents.
        scheduler ([`~diffusers.FlowMatchEulerDiscreteScheduler`]):
            Flow-matching scheduler; any diffusers flow-match scheduler works (`from_config`).
        vae ([`MelVAE`]):
            Mel-spectrogram VAE; `denormalize_latents` + `decode` turn latents into a mono log-mel spectrogram.
        vocoder ([`~diffusers.MMAudioVocoder`] or [`VocosVocoder`]):
            Mel -> waveform, 128 bands, hop 512, 44.1 kHz, `vocoder(mel).sample` of shape `(batch, 1, frames * 512)`:
            BigVGAN-v2 (`MMAudioVocoder`) or Vocos (`VocosVocoder`); all output channels run in one batch.
        mono2stereo ([`Mono2Stereo`], *optional*):
            Predicts left/right mels from the mono mel. Without it the pipeline returns mono audio.
    """

    model_cpu_offload_seq = "text_encoder->vision_encoder->sync_encoder->transformer->vae->mono2stereo->vocoder"
    _optional_components = ["mono2stereo"]
    _callback_tensor_inputs = ["latents", "velocity"]

    # Requests beyond this length are almost surely a unit mistake (samples or milliseconds for seconds); the
    # network itself has no length limit.
    max_duration_seconds: float = 600.0
    # How much longer than the video a requested `duration` may be (float round-off of frame counts).
    duration_tolerance_seconds: float = 1e-3
    # CLIP frames per vision-encoder forward, and Synchformer segments per forward (bounds memory on long videos).
    vision_batch_size: int = 64
    # Runs of exactly equal consecutive CLIP frames (static shots) are encoded once (`encode_clip_frames`).
    deduplicate_frames: bool = True
    sync_segment_batch_size: int = 32
    output_types = ("np", "pt", "latent", "mel")
    # Window length of long-form generation (`window_seconds="auto"`) when the transformer's config does not record
    # the clip length it was trained on (`trained_seconds`): the length V2A models are commonly trained at (MMAudio
    # 8 s, Kling-Foley and HunyuanVideo-Foley up to 10 s; the demo transformer saw 2-12 s clips).
    default_window_seconds: float = 10.0
    # Clips up to this much longer than the window are still generated in one pass (no window of a few frames).
    window_margin_seconds: float = 0.1

    def __init__(
        self,
        tokenizer: T5Tokenizer | T5TokenizerFast,
        text_encoder: T5EncoderModel,
        vision_encoder: CLIPVisionModelWithProjection,
        sync_encoder: SynchformerEncoder,
        transformer: FoleyMMDiTTransformer,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: MelVAE,
        vocoder: MMAudioVocoder | VocosVocoder,
        mono2stereo: Mono2Stereo | None = None,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vision_encoder=vision_encoder,
            sync_encoder=sync_encoder,
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            vocoder=vocoder,
            mono2stereo=mono2stereo,
        )
        # As diffusers pipelines derive `vae_scale_factor` once: mel frames per latent frame (the VAE's downsampling).
        self.vae_scale_factor = vae.samples_per_latent_frame // vae.config.hop_length if vae is not None else 2
        # As diffusers pipelines build their `image_processor` from the VAE: frame sizes and the shortest sync track
        # come from the encoders' configs.
        self.video_processor = FoleyVideoProcessor(
            clip_image_size=int(getattr(getattr(vision_encoder, "config", None), "image_size", 224)),
            sync_image_size=int(getattr(getattr(sync_encoder, "config", None), "image_size", 224)),
            sync_segment_frames=int(getattr(getattr(sync_encoder, "config", None), "segment_frames", 16)),
        )
        self._check_vocoder_hop()

    def _check_vocoder_hop(self) -> None:
        """A vocoder must turn one mel frame into exactly one mel hop of samples; any other factor plays the audio
        at the wrong speed and length, so it is refused when the pipeline is built (or loaded)."""
        if self.vocoder is None:
            return
        mel_hop = int(getattr(self.vae.config, "hop_length", HOP_LENGTH)) if self.vae is not None else HOP_LENGTH
        vocoder_hop = vocoder_hop_length(self.vocoder)
        if vocoder_hop != mel_hop:
            raise ValueError(
                f"`vocoder`: a {type(self.vocoder).__name__} producing {vocoder_hop} samples per mel frame does not "
                f"fit the mel hop length {mel_hop} of the VAE; use a vocoder whose upsampling factor (product of "
                f"`upsample_rates`, or `hop_length`) is {mel_hop}."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "KlingFoleyPipeline":
        r"""
        Load a pipeline from a local directory written by `save_pretrained`, or from a Hub repo id.

        A Hub id is fetched with `huggingface_hub.snapshot_download` first (offline, `HF_HUB_OFFLINE=1`, it resolves
        to the local cache), then loaded like a local directory. Components passed as keyword arguments (e.g.
        `scheduler=FlowMatchHeunDiscreteScheduler(...)`, `mono2stereo=None`) replace the saved ones; other keyword
        arguments (`dtype`, ...) go to [`DiffusionPipeline.from_pretrained`].

        Weights load from safetensors only (`use_safetensors=True` is the default here): a component folder holding
        only pickle weights (`.bin`, `.pt`, ...) raises `FileNotFoundError` instead of being unpickled. Opt in to
        pickle for files you trust with `use_safetensors=None` (diffusers' default: safetensors where present,
        pickle otherwise).

        The generic entry point works too: `DiffusionPipeline.from_pretrained(folder_or_id, trust_remote_code=True)`
        returns this class through the code files that `save_pretrained` writes (see `save_config`). This method
        lets diffusers run those files only when each of them does nothing but import from the installed
        foley_toolkit; any other code in them needs your own `trust_remote_code=True`.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            looks_local = os.path.isabs(path) or path.startswith(".") or path.count("/") != 1 or os.path.exists(path)
            if looks_local:
                raise FileNotFoundError(
                    f"`pretrained_model_name_or_path`: {path!r} is not a pipeline directory (expected a folder with "
                    "`model_index.json`, or a Hub repo id 'owner/name')."
                )
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                path,
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
                force_download=kwargs.get("force_download", False),
                proxies=kwargs.get("proxies"),
            )
        elif not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(
                f"`pretrained_model_name_or_path`: {path!r} has no `model_index.json`; save a pipeline there with "
                "`save_pretrained` first."
            )
        model_index = cls.load_config(path)
        # diffusers' own default (`None`) falls back to unpickling `.bin` files; here safetensors is the default.
        kwargs.setdefault("use_safetensors", True)
        if kwargs["use_safetensors"] is True:
            cls._check_safetensors_weights(path, model_index, passed=kwargs)
        code_files = cls._code_files(path, model_index)
        if code_files and "custom_pipeline" not in kwargs and all(map(_only_imports_foley_toolkit, code_files)):
            # diffusers runs a folder's pipeline / component code files only under `trust_remote_code`; these
            # only import the installed foley_toolkit, so running them runs nothing else.
            kwargs.setdefault("trust_remote_code", True)
        pipe = super().from_pretrained(path, **kwargs)
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def from_components(cls, **kwargs) -> "KlingFoleyPipeline":
        r"""
        Build a pipeline from converted public parts (`foley-toolkit convert` folders for `vocoder`, `sync_encoder`,
        `vision_encoder`, `text_encoder`) plus a new (`transformer_preset=`) or trained (`transformer=`) transformer,
        and optionally trained `vae` / `mono2stereo`; `output_dir=` saves it. The new transformer's input widths come
        from the encoders' configs. See [`~foley_toolkit.conversion.assemble_pipeline`] for every argument.
        """
        from ...conversion.assemble import assemble_pipeline

        return assemble_pipeline(**kwargs)

    # Weight files that are pickles (loading one can run code).
    _pickle_weight_suffixes = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

    @classmethod
    def _check_safetensors_weights(cls, path: str, model_index: dict, passed: dict) -> None:
        """Raise `FileNotFoundError` for a component folder with pickle weights and no `.safetensors` file."""
        for name, entry in model_index.items():
            folder = os.path.join(path, name)
            if name.startswith("_") or name in passed or not isinstance(entry, (list, tuple)) or entry[0] is None:
                continue
            if not os.path.isdir(folder):
                continue
            files = os.listdir(folder)
            pickles = sorted(f for f in files if f.endswith(cls._pickle_weight_suffixes))
            if pickles and not any(f.endswith(".safetensors") for f in files):
                raise FileNotFoundError(
                    f"`{name}`: {folder!r} has no safetensors weights, only {', '.join(pickles)} (pickle, which can "
                    "run code when loaded). Convert it to safetensors (`save_pretrained` writes them), or, only for a "
                    "file you trust, opt in with `from_pretrained(..., use_safetensors=None)` (diffusers' default: "
                    "safetensors where present, pickle otherwise)."
                )

    # diffusers resolves a class that lives outside diffusers/transformers from a code file shipped with the saved
    # pipeline (`trust_remote_code=True`), locally and from the Hub: `_class_name` `[module, class]` names
    # `<module>.py` next to `model_index.json`, and a component entry `[library, class]` names
    # `<component>/<library>.py`. `save_config` writes both kinds as files that only re-export the installed
    # classes, so what loads *is* `foley_toolkit.KlingFoleyPipeline` (and its component classes). Component entries
    # keep their module path as the library name, so a folder without the files still loads wherever foley_toolkit
    # is imported.
    PIPELINE_MODULE = "pipeline_kling_foley"

    @staticmethod
    def reexport_file_text(module: str, class_name: str) -> str:
        """The code file `save_config` writes for a class of this package: an import and `__all__`."""
        return (
            "# Written by foley_toolkit's `KlingFoleyPipeline.save_pretrained` so that diffusers' generic loader\n"
            "# finds this class:  DiffusionPipeline.from_pretrained(<this folder or Hub id>, trust_remote_code=True)\n"
            "# It defines nothing: it imports the installed package (`pip install foley_toolkit`).\n"
            f"from {module} import {class_name}\n"
            "\n"
            f'__all__ = ["{class_name}"]\n'
        )

    @classmethod
    def _code_files(cls, path: str, model_index: dict) -> list[str]:
        """The code files of a saved pipeline that diffusers would run: the pipeline's and the components'."""
        files = []
        class_name = model_index.get("_class_name")
        if isinstance(class_name, (list, tuple)):
            files.append(os.path.join(path, f"{class_name[0]}.py"))
        for name, entry in model_index.items():
            if not name.startswith("_") and isinstance(entry, (list, tuple)) and isinstance(entry[0], str):
                files.append(os.path.join(path, name, f"{entry[0]}.py"))
        return [f for f in files if os.path.isfile(f)]

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        r"""
        Write `model_index.json` (called by `save_pretrained` after the components, before any upload), then the
        code files diffusers needs to resolve the out-of-tree classes (`write_code_files`).
        """
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        self.write_code_files(save_directory)

    @classmethod
    def write_code_files(cls, pipeline_dir: str | os.PathLike) -> None:
        r"""
        Make a saved pipeline folder loadable by `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`,
        locally and from the Hub: `_class_name` in `model_index.json` becomes `["pipeline_kling_foley",
        "KlingFoleyPipeline"]` with `pipeline_kling_foley.py` next to it, and each component of this package
        (`[foley_toolkit.<module>, <class>]`) gets `<component>/foley_toolkit.<module>.py`; every file only
        re-exports the installed class. `save_pretrained` calls it; call it on folders written before, or after
        replacing a component's folder by hand. Each file is written to a temporary name and renamed.
        """
        pipeline_dir = os.fspath(pipeline_dir)
        index_file = os.path.join(pipeline_dir, cls.config_name)
        if not os.path.isfile(index_file):
            raise FileNotFoundError(f"`pipeline_dir`: {pipeline_dir!r} has no `{cls.config_name}`.")
        with open(index_file, encoding="utf-8") as f:
            model_index = json.load(f)
        cls._write_atomic(
            os.path.join(pipeline_dir, f"{cls.PIPELINE_MODULE}.py"),
            cls.reexport_file_text(KlingFoleyPipeline.__module__, "KlingFoleyPipeline"),
        )
        for name, entry in model_index.items():
            folder = os.path.join(pipeline_dir, name)
            if name.startswith("_") or not isinstance(entry, list) or not isinstance(entry[0], str):
                continue
            if entry[0].split(".")[0] == __name__.split(".")[0] and os.path.isdir(folder):
                cls._write_atomic(os.path.join(folder, f"{entry[0]}.py"), cls.reexport_file_text(*entry))
        # Last: `_class_name` names the pipeline file only once that file exists.
        model_index["_class_name"] = [cls.PIPELINE_MODULE, "KlingFoleyPipeline"]
        cls._write_atomic(index_file, json.dumps(model_index, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _write_atomic(path: str, text: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz."""
        return int(getattr(self.vae.config, "sample_rate", SAMPLE_RATE)) if self.vae is not None else SAMPLE_RATE

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        return getattr(self, "_guidance_interval", None)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    # ------------------------------------------------------------------------------------------------------------
    # Conditions
    # ------------------------------------------------------------------------------------------------------------

    def _encode_text(self, text: list[str], device: torch.device, max_sequence_length: int):
        text_inputs = self.tokenizer(
            text,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids = text_inputs.input_ids
        untruncated_ids = self.tokenizer(text, padding="longest", return_tensors="pt").input_ids
        if untruncated_ids.shape[-1] > input_ids.shape[-1]:
            removed_text = self.tokenizer.batch_decode(untruncated_ids[:, max_sequence_length - 1 : -1])
            logger.warning(f"Truncated the prompt to {max_sequence_length} tokens; removed: {removed_text}")

        attention_mask = text_inputs.attention_mask.to(device)
        embeds = self.text_encoder(input_ids.to(device), attention_mask=attention_mask)[0]
        # T5 writes non-zero states at padded positions; zero them so that padding cannot leak into attention
        # even where a mask is ignored (mean pooling of the global condition, for one).
        embeds = embeds * attention_mask.unsqueeze(-1).to(embeds.dtype)
        return embeds, attention_mask

    # No autograd, as `encode_video` and `__call__`: the encoders are frozen, and grad mode runs other kernels whose
    # last bits differ, so embeddings computed here reproduce the pipeline's own exactly.
    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_waveforms_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        max_sequence_length: int = 128,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        r"""
        Encode prompts (and negative prompts) with T5; precomputed embeddings are used as given instead.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                Prompt(s); `None` gives `None` embeddings (the transformer then uses its learned empty text).
            device (`torch.device`, *optional*):
                Device of the returned tensors; defaults to the pipeline's execution device.
            num_waveforms_per_prompt (`int`, defaults to 1):
                Each embedding is repeated this many times (consecutively) along the batch.
            do_classifier_free_guidance (`bool`, defaults to `True`):
                Whether to encode `negative_prompt` as well.
            negative_prompt (`str` or `list[str]`, *optional*):
                What the unconditional branch of classifier-free guidance is steered away from. `None` keeps the
                learned empty text embedding as the unconditional text.
            max_sequence_length (`int`, defaults to 128):
                Token count every prompt is padded or truncated to.
            prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed embeddings `(batch, sequence, 768)` used instead of encoding `prompt` (pass one or the
                other), with their `prompt_attention_mask` `(batch, sequence)`.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed negative embeddings used instead of encoding `negative_prompt`, with their
                `negative_prompt_attention_mask`.
            prompt_attention_mask, negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                1 for real tokens, 0 for padding, as returned by this method.

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_attention_mask)`: embeddings of
            shape `(batch * num_waveforms_per_prompt, max_sequence_length, 768)` and masks of shape
            `(batch * num_waveforms_per_prompt, max_sequence_length)` (1 = real token), each `None` when its prompt
            is `None` (or, for the negative, when guidance is off).
        """
        device = device or self._execution_device
        negative_embeds = negative_attention_mask = None

        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")

        def given(name, embeds, mask_name, mask):
            self._check_text_embeds(name, embeds, mask_name, mask)
            return embeds.to(device), mask.to(device)

        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompt_embeds is not None:
            prompt_embeds, prompt_attention_mask = given(
                "prompt_embeds", prompt_embeds, "prompt_attention_mask", prompt_attention_mask
            )
        elif prompts is not None:
            prompt_embeds, prompt_attention_mask = self._encode_text(list(prompts), device, max_sequence_length)

        if not do_classifier_free_guidance:
            negative_embeds = negative_attention_mask = None
        elif negative_prompt_embeds is not None:
            negative_embeds, negative_attention_mask = given(
                "negative_prompt_embeds",
                negative_prompt_embeds,
                "negative_prompt_attention_mask",
                negative_prompt_attention_mask,
            )
        elif negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            batch_size = prompt_embeds.shape[0] if prompt_embeds is not None else len(negatives)
            if len(negatives) == 1 and batch_size > 1:
                negatives = negatives * batch_size
            if len(negatives) != batch_size:
                raise ValueError(
                    f"`negative_prompt` has batch size {len(negatives)}, but `prompt` has batch size {batch_size}; "
                    "pass one negative prompt or one per prompt."
                )
            negative_embeds, negative_attention_mask = self._encode_text(negatives, device, max_sequence_length)

        def repeat(x):
            return None if x is None else x.repeat_interleave(num_waveforms_per_prompt, dim=0)

        return (
            repeat(prompt_embeds),
            repeat(prompt_attention_mask),
            repeat(negative_embeds),
            repeat(negative_attention_mask),
        )

    @staticmethod
    def trim_text_padding(
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        r"""
        Drop the trailing text positions that are padding in every row of both the prompt and the negative prompt,
        keeping at least one.

        Prompts are padded to `max_sequence_length` (128 T5 tokens; a caption has about 12), and every position
        runs through every joint block. Padded tokens change nothing in the audio: they are masked out of the joint
        attention and of the text pooling, text tokens have no RoPE position (identity rows) and the text
        feed-forward is per token. So the audio equals the padded path's up to float rounding, with fewer FLOPs.
        Columns that are real in any row are kept (also any padding before them), so masks padded on either side
        are safe.

        Args:
            prompt_embeds, negative_prompt_embeds (`torch.Tensor` or `None`): `(batch, sequence, text_dim)`, the
                same `sequence` for both (they are concatenated for guidance).
            prompt_attention_mask, negative_attention_mask (`torch.Tensor` or `None`): `(batch, sequence)`,
                1 = real token. Embeddings without a mask are kept whole.

        Returns:
            The four inputs cut to `(batch, length, text_dim)` / `(batch, length)`, `1 <= length <= sequence`.
        """
        pairs = [(prompt_embeds, prompt_attention_mask), (negative_prompt_embeds, negative_attention_mask)]
        length = 1
        for embeds, mask in pairs:
            if embeds is None:
                continue
            if mask is None:
                return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_attention_mask
            real = torch.nonzero(mask.bool().any(dim=0))
            if real.numel():
                length = max(length, int(real[-1]) + 1)

        def cut(x):
            return None if x is None else x[:, :length]

        return cut(prompt_embeds), cut(prompt_attention_mask), cut(negative_prompt_embeds), cut(negative_attention_mask)

    def _check_text_embeds(
        self, name: str, embeds: torch.Tensor | None, mask_name: str, mask: torch.Tensor | None
    ) -> None:
        """Validate precomputed text embeddings `(batch, sequence, text_dim)` and their mask `(batch, sequence)`."""
        if embeds is None:
            if mask is not None:
                raise ValueError(f"`{mask_name}` was given without `{name}`; it is the mask of those embeddings.")
            return
        text_dim = getattr(self.transformer.config, "text_dim", None) if self.transformer is not None else None
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] == 0:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"`{name}` must be a tensor of shape (batch, sequence, {text_dim}), got {shape}.")
        if text_dim is not None and embeds.shape[-1] != text_dim:
            raise ValueError(
                f"`{name}` has {embeds.shape[-1]} features per token; the transformer takes {text_dim} "
                "(the text encoder's width)."
            )
        if mask is None:
            # The text path attends only to real tokens; without the mask, padding would be attended silently.
            raise ValueError(
                f"`{name}` needs `{mask_name}` (1 = real token, 0 = padding) as `encode_prompt` returns it; pass "
                f"`torch.ones({embeds.shape[0]}, {embeds.shape[1]})` if every position is a token."
            )
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"`{mask_name}` must have shape {tuple(embeds.shape[:2])} (as `{name}`), got {shape}.")

    def load_videos(
        self,
        video: VideoLike | list[VideoLike],
        video_fps: float | None = None,
        duration: float | None = None,
    ) -> list[VideoInput]:
        """Decode each video once with `load_video`, at most `duration` seconds of it (without `duration`, at most
        `max_duration_seconds` plus the tolerance, enough to tell a too long video), at the video processor's frame
        rates, with errors that name the `video` argument."""
        videos = list(video) if isinstance(video, (list, tuple)) else [video]
        max_duration = self.max_duration_seconds + self.duration_tolerance_seconds if duration is None else duration
        config = self.video_processor.config
        loaded = []
        for index, item in enumerate(videos):
            name = "`video`" if len(videos) == 1 else f"`video[{index}]`"
            if isinstance(item, VideoInput):
                loaded.append(item)
                continue
            if isinstance(item, (str, os.PathLike)) and not os.path.isfile(item):
                raise FileNotFoundError(f"{name}: no video file at {os.fspath(item)!r}.")
            try:
                clip = load_video(
                    item,
                    fps=video_fps,
                    max_duration=max_duration,
                    clip_frame_rate=config.clip_frame_rate,
                    sync_frame_rate=config.sync_frame_rate,
                )
            except (FileNotFoundError, ValueError) as error:
                # `load_video` names its argument `video`; in a batch, say which one.
                if len(videos) == 1:
                    raise
                raise type(error)(f"{name}: {error}") from error
            except Exception as error:  # anything else from the decoder: not a usable video
                source = os.fspath(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__
                raise ValueError(f"{name}: could not decode {source!r} as a video ({error}).") from error
            if clip.clip_frames.shape[0] == 0 or clip.sync_frames.shape[0] == 0 or not clip.duration > 0:
                raise ValueError(f"{name}: the video has no frames (duration {clip.duration} s).")
            loaded.append(clip)
        return loaded

    def _resolve_video_duration(self, clips: list[VideoInput], duration: float | None) -> float:
        durations = [float(clip.duration) for clip in clips]
        shortest = min(durations)
        if duration is None:
            if shortest > self.max_duration_seconds:
                raise ValueError(
                    f"`video` is longer than `max_duration_seconds`={self.max_duration_seconds} s; pass `duration` "
                    "to generate audio for its beginning."
                )
            if max(durations) - shortest > self.duration_tolerance_seconds:
                raise ValueError(
                    f"`video`: the videos have different durations {durations}; pass `duration` (at most "
                    f"{shortest} s) to generate the same length for all of them."
                )
            return shortest
        if duration > shortest + self.duration_tolerance_seconds:
            raise ValueError(
                f"`duration`={duration} s is longer than the video ({shortest} s); it may only shorten the video."
            )
        return min(float(duration), shortest)

    def sequence_lengths(self, duration: float) -> dict[str, int]:
        r"""
        Every sequence length of `duration` seconds for this pipeline's components ([`audio_utils.sequence_lengths`]
        with the VAE's sample rate, FFT size, hop and downsampling, the video processor's frame rates and the sync
        encoder's segment frames, stride and tokens per segment).
        """
        kwargs = {}
        if self.vae is not None:
            vae_config = self.vae.config
            kwargs.update(n_fft=vae_config.n_fft, hop_length=vae_config.hop_length)
            kwargs["latent_downsample"] = self.vae_scale_factor
        if self.sync_encoder is not None:
            sync_config = self.sync_encoder.config
            kwargs.update(
                sync_segment_frames=sync_config.segment_frames, sync_segment_stride=sync_config.segment_stride
            )
            kwargs["sync_tokens_per_segment"] = self.sync_encoder.tokens_per_segment
        video_config = self.video_processor.config
        kwargs.update(clip_frame_rate=video_config.clip_frame_rate, sync_frame_rate=video_config.sync_frame_rate)
        return sequence_lengths(duration, self.sample_rate, **kwargs)

    @torch.no_grad()
    def encode_video(
        self,
        video: VideoLike | list[VideoLike],
        device: torch.device | None = None,
        duration: float | None = None,
        video_fps: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        r"""
        Decode videos and compute their CLIP and Synchformer features.

        Args:
            video (path, bytes, array, tensor, [`VideoInput`], or a list of them):
                One video or a batch. Arrays/tensors are frames `(frames, height, width, 3)` and need `video_fps`.
            device (`torch.device`, *optional*):
                Device of the returned tensors; defaults to the pipeline's execution device.
            duration (`float`, *optional*):
                Seconds to use from the start of each video; defaults to the video's duration (videos of a batch
                must then have the same duration). Longer than a video raises `ValueError`.
            video_fps (`float`, *optional*):
                Frame rate of array/tensor videos.

        Returns:
            `(clip_features, sync_features, duration)`: CLIP image embeddings of shape
            `(batch, clip_frames, clip_dim)`, Synchformer tokens of shape `(batch, sync_tokens, sync_dim)`, and the
            duration in seconds they cover; frame counts follow `sequence_lengths(duration)`.
        """
        clips = self.load_videos(video, video_fps=video_fps, duration=duration)
        duration = self._resolve_video_duration(clips, duration)
        clip_features, sync_features = self._encode_video_frames(clips, self.sequence_lengths(duration), device)
        return clip_features, sync_features, duration

    def encode_clip_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        r"""
        CLIP image embeddings of preprocessed frames, in batches of `vision_batch_size` (frames are independent
        images). A frame equal to the one before it (a static shot, a video at a lower frame rate than the 8 fps
        CLIP track) is encoded once: runs of exactly equal frames go through the vision encoder as one frame, and
        its embedding is copied back to every frame of the run (`deduplicate_frames`, on by default). The output
        equals encoding every frame bit for bit wherever the vision encoder gives a frame the same embedding in any
        batch; CPU GEMMs can round a one-frame batch differently from a larger one (fp32, ~1 ulp: 2.4e-7 in the
        tests), and the plain path itself differs by as much between batch splits.

        Args:
            pixel_values (`torch.Tensor`): `(frames, 3, image_size, image_size)`, as `video_processor.preprocess`
                returns them (flattened over clips).

        Returns:
            `torch.Tensor`: `image_embeds` `(frames, projection_dim)`.
        """
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (frames, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        index = None
        if self.deduplicate_frames and pixel_values.shape[0] > 1:
            starts = torch.ones(pixel_values.shape[0], dtype=torch.bool, device=pixel_values.device)
            starts[1:] = (pixel_values[1:] != pixel_values[:-1]).flatten(1).any(dim=1)
            if not bool(starts.all()):
                index = starts.cumsum(0) - 1  # frame -> its run's first frame among the encoded ones
                pixel_values = pixel_values[starts]
        self._onload(self.vision_encoder)
        image_embeds = torch.cat(
            [
                self.vision_encoder(pixel_values=chunk).image_embeds
                for chunk in pixel_values.split(self.vision_batch_size)
            ]
        )
        return image_embeds if index is None else image_embeds[index]

    def _encode_video_frames(
        self, clips: list[VideoInput], lengths: dict[str, int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded videos -> `(clip_features, sync_features)` for the frame counts of `lengths`."""
        device = device or self._execution_device
        # Very short clips still get one CLIP frame and one Synchformer segment (the processor repeats the last frame).
        clip_pixel_values, sync_frames = self.video_processor.preprocess(
            clips, lengths["clip_frames"], lengths["sync_frames"], dtype=self.vision_encoder.dtype, device=device
        )
        clip_features = self.encode_clip_frames(clip_pixel_values.flatten(0, 1))
        clip_features = clip_features.view(len(clips), clip_pixel_values.shape[1], -1)
        # Synchformer at 25 fps: the encoder windows the segments and normalises its uint8 frames chunk by chunk.
        self._onload(self.sync_encoder)
        sync_features = self.sync_encoder(
            sync_frames,
            segment_batch_size=self.sync_segment_batch_size,
            frame_transform=partial(self.video_processor.preprocess_sync, dtype=torch.float32, device=device),
        )
        return clip_features, sync_features

    # ------------------------------------------------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_guidance_interval(interval) -> tuple[float, float] | None:
        """`guidance_interval` as a `(low, high)` pair of floats with `0 <= low <= high <= 1`, or `None`."""
        if interval is None:
            return None
        try:
            low, high = (float(value) for value in interval)
        except (TypeError, ValueError):
            raise ValueError(f"`guidance_interval` must be a (low, high) pair of noise levels, got {interval!r}.")
        if not (0.0 <= low <= high <= 1.0):
            raise ValueError(f"`guidance_interval` must satisfy 0 <= low <= high <= 1, got {interval!r}.")
        return low, high

    def check_inputs(
        self,
        video,
        prompt,
        negative_prompt,
        duration,
        num_inference_steps,
        num_waveforms_per_prompt,
        output_type,
        callback_on_step_end_tensor_inputs,
        guidance_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
        timesteps: list[float] | np.ndarray | torch.Tensor | None = None,
        max_sequence_length: int = 128,
    ) -> int:
        """Validate the arguments of `__call__`; return the batch size (number of clips/prompts)."""
        self._check_vocoder_hop()  # again here: `pipe.vocoder = ...` swaps a component without `__init__`
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        self._check_text_embeds("prompt_embeds", prompt_embeds, "prompt_attention_mask", prompt_attention_mask)
        self._check_text_embeds(
            "negative_prompt_embeds", negative_prompt_embeds, "negative_prompt_attention_mask",
            negative_prompt_attention_mask,
        )  # fmt: skip
        # Both guidance branches run in one batch: their token counts must agree (text is padded to
        # `max_sequence_length`).
        lengths = {
            name: value
            for name, value in (
                ("prompt_embeds", None if prompt_embeds is None else prompt_embeds.shape[1]),
                ("negative_prompt_embeds", None if negative_prompt_embeds is None else negative_prompt_embeds.shape[1]),
                ("prompt", max_sequence_length if prompt is not None else None),
                ("negative_prompt", max_sequence_length if negative_prompt is not None else None),
            )
            if value is not None
        }
        if (prompt_embeds is not None or negative_prompt_embeds is not None) and len(set(lengths.values())) > 1:
            raise ValueError(
                f"`prompt_embeds` and `negative_prompt_embeds` (or the text, padded to `max_sequence_length`) must "
                f"have the same number of tokens, got {lengths}."
            )
        self._check_schedule(sigmas, timesteps)
        if video is None and prompt is None and prompt_embeds is None:
            raise ValueError("Provide `video`, `prompt` or both (`prompt_embeds` in place of `prompt`); got neither.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (
                isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value))
            ):
                raise ValueError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}.")
        if video is None and duration is None:
            raise ValueError("`duration` (seconds) is required for text-to-audio generation (no `video`).")
        if duration is not None:
            if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not math.isfinite(duration):
                raise ValueError(f"`duration` must be a number of seconds, got {duration!r}.")
            if duration <= 0 or duration > self.max_duration_seconds:
                raise ValueError(
                    f"`duration` must be in (0, {self.max_duration_seconds}] seconds, got {duration}."
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if not isinstance(num_waveforms_per_prompt, int) or num_waveforms_per_prompt < 1:
            raise ValueError(f"`num_waveforms_per_prompt` must be an integer >= 1, got {num_waveforms_per_prompt!r}.")
        # A NaN scale would fail no comparison and silently fill the output with NaN (then clipped noise).
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(
            guidance_scale
        ):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}.")
        if output_type not in self.output_types:
            raise ValueError(f"`output_type` must be one of {self.output_types}, got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}, got "
                f"{callback_on_step_end_tensor_inputs}."
            )

        num_videos = None if video is None else (len(video) if isinstance(video, (list, tuple)) else 1)
        num_prompts = None if prompt is None else (1 if isinstance(prompt, str) else len(prompt))
        prompt_name = "prompt"
        if prompt_embeds is not None:
            num_prompts, prompt_name = prompt_embeds.shape[0], "prompt_embeds"
        if num_videos == 0 or num_prompts == 0:
            raise ValueError("`video` / `prompt` lists must not be empty.")
        sizes = [n for n in (num_videos, num_prompts) if n is not None]
        batch_size = max(sizes)
        # One video may be paired with several prompts and one prompt with several videos; otherwise they pair up.
        if any(n not in (1, batch_size) for n in sizes):
            raise ValueError(
                f"`video` has batch size {num_videos} but `{prompt_name}` has batch size {num_prompts}; pass the same "
                "number of each (or a single one of either)."
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if len(negative_prompt) not in (1, batch_size):
                raise ValueError(
                    f"`negative_prompt` has batch size {len(negative_prompt)}, expected 1 or {batch_size}."
                )
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] not in (1, batch_size):
            raise ValueError(
                f"`negative_prompt_embeds` has batch size {negative_prompt_embeds.shape[0]}, expected 1 or "
                f"{batch_size}."
            )
        return batch_size

    def _check_schedule(self, sigmas, timesteps) -> None:
        """Custom `sigmas` (noise levels in (0, 1], the scheduler appends the final 0) or `timesteps` (in
        (0, num_train_timesteps]): one of them, 1-D, finite, strictly decreasing, and a scheduler that takes it."""
        if sigmas is not None and timesteps is not None:
            raise ValueError("Pass either `sigmas` or `timesteps`, not both.")
        for name, value in (("sigmas", sigmas), ("timesteps", timesteps)):
            if value is None:
                continue
            if name not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ValueError(
                    f"`{name}`: the scheduler {type(self.scheduler).__name__} takes no custom {name}; use a "
                    "FlowMatchEulerDiscreteScheduler, or `num_inference_steps`."
                )
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().double().numpy()
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise ValueError(f"`{name}` must be a 1-D sequence of numbers, got {value!r}.") from error
            upper = 1.0 if name == "sigmas" else float(self.scheduler.config.num_train_timesteps)
            if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
                raise ValueError(f"`{name}` must be a non-empty 1-D sequence of finite numbers, got {value!r}.")
            if array.min() <= 0 or array.max() > upper or (array.size > 1 and not (np.diff(array) < 0).all()):
                raise ValueError(
                    f"`{name}` must decrease strictly within (0, {upper:g}] (the final 0 is appended by the "
                    f"scheduler), got {array.tolist()}."
                )

    # ------------------------------------------------------------------------------------------------------------
    # Latents, timesteps, decoding
    # ------------------------------------------------------------------------------------------------------------

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        latent_frames: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gaussian noise `(batch, latent_channels, latent_frames)` (sigma = 1), or check and move given `latents`."""
        shape = (batch_size, num_channels_latents, latent_frames)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the batch size is {batch_size} (clips x "
                "`num_waveforms_per_prompt`)."
            )
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=dtype)

    def _set_timesteps(
        self,
        num_inference_steps: int,
        device: torch.device,
        latent_frames: int,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
        timesteps: list[float] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Set the scheduler to Kling-Foley's schedule ([`retrieve_kling_foley_timesteps`]) and return its timesteps."""
        timesteps, _ = retrieve_kling_foley_timesteps(
            self.scheduler, num_inference_steps, device, latent_frames, sigmas=sigmas, timesteps=timesteps
        )
        return timesteps

    def denoise(
        self,
        latents: torch.Tensor,
        conditions: FoleyMMDiTConditions,
        timesteps: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        known: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
        step_offset: int = 0,
        progress_bar=None,
    ) -> torch.Tensor:
        r"""
        The flow-matching steps: guided velocity from the transformer, then a scheduler step, for each timestep.

        Args:
            latents (`torch.Tensor`): Initial noise `(batch, latent_channels, frames)` (sigma = 1), float32.
            conditions ([`FoleyMMDiTConditions`]): From `prepare_transformer_conditions` (`[uncond, cond]` with
                guidance).
            timesteps (`torch.Tensor`): The scheduler's timesteps, already set (`_set_timesteps`).
            generator: For stochastic flow-match schedulers, which draw noise in `step`.
            known (`torch.Tensor`, *optional*): Finished latents `(batch, latent_channels, overlap)` of the first
                `overlap` frames (long-form generation: the previous window's tail). Before every step they replace
                those frames, re-noised to the step's sigma with the initial noise there,
                `(1 - sigma) * known + sigma * noise`, so the model continues them (latent-prefix inpainting).
            callback_on_step_end, callback_on_step_end_tensor_inputs: As in `__call__`; the callback gets
                `step_offset + i` as its step.
            progress_bar (*optional*): Updated once per step.

        Returns:
            `torch.Tensor`: the final latents, float32, the shape of `latents`.
        """
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator  # stochastic flow-match schedulers draw their noise from it too
        overlap = 0 if known is None else known.shape[-1]
        noise = latents[..., :overlap].clone()
        transformer_dtype = self.transformer.dtype
        do_cfg = self.do_classifier_free_guidance
        interval = self.guidance_interval
        conditional = None
        if do_cfg and interval is not None:  # the cond half of `[uncond, cond]`, for the unguided steps
            conditional = conditions.select(range(latents.shape[0], 2 * latents.shape[0]))
        for i, t in enumerate(timesteps):
            if self.interrupt:
                continue
            sigma = float(t) / self.scheduler.config.num_train_timesteps  # flow-match timesteps are sigma * 1000
            if overlap:
                latents = torch.cat([(1.0 - sigma) * known + sigma * noise, latents[..., overlap:]], dim=-1)
            guided = do_cfg and (interval is None or interval[0] <= sigma <= interval[1])
            latent_model_input = torch.cat([latents] * 2) if guided else latents
            timestep = t.expand(latent_model_input.shape[0]).to(latent_model_input.dtype)
            velocity = self.transformer(
                latent_model_input.to(transformer_dtype),
                timestep,
                conditions=conditions if guided or not do_cfg else conditional,
                attention_kwargs=self.attention_kwargs,
                return_dict=False,
            )[0]
            if guided:
                velocity_uncond, velocity_cond = velocity.chunk(2)
                velocity = velocity_uncond + self.guidance_scale * (velocity_cond - velocity_uncond)

            latents = self.scheduler.step(velocity.to(latents.dtype), t, latents, return_dict=False, **step_kwargs)[0]

            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:  # a loop, not a comprehension: locals() of this frame
                    callback_kwargs[k] = locals()[k]
                callback_outputs = callback_on_step_end(self, step_offset + i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)
            if progress_bar is not None:
                progress_bar.update()
        return latents

    def decode_latents(
        self, latents: torch.Tensor, clip_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Normalised latents `(batch, latent_channels, latent_frames)` -> log-mel spectrograms
        `(batch, channels, mel_bins, 2 * latent_frames)`: 2 channels (left, right) with `mono2stereo`, else 1.
        """
        latents = self.vae.denormalize_latents(latents.to(self.vae.dtype))
        mono_mel = self.vae.decode(latents).sample
        if self.mono2stereo is None:
            return mono_mel.unsqueeze(1)
        video_features = None
        video_feature_dim = getattr(self.mono2stereo.config, "video_feature_dim", None)
        if clip_features is not None and video_feature_dim == clip_features.shape[-1]:
            video_features = clip_features.to(self.mono2stereo.dtype)
        stereo = self.mono2stereo(mono_mel.to(self.mono2stereo.dtype), video_features=video_features)
        return torch.stack([stereo.left_mel, stereo.right_mel], dim=1)

    def mel_to_waveform(self, mel: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Vocode `(batch, channels, mel_bins, frames)` log-mels, all channels in one vocoder batch, trim to
        `(batch, channels, num_samples)` float32 and remove any DC offset (`remove_dc`)."""
        batch_size, channels = mel.shape[:2]
        waveform = self.vocoder(mel.flatten(0, 1).to(self.vocoder.dtype)).sample
        waveform = waveform.view(batch_size, channels, -1)
        if waveform.shape[-1] < num_samples:
            raise RuntimeError(
                f"The vocoder produced {waveform.shape[-1]} samples for {num_samples} requested; its upsampling "
                f"factor must be the VAE's hop length ({self.vae.config.hop_length})."
            )
        return self.remove_dc(waveform[..., :num_samples].float())

    # Corner of the DC-blocking high-pass: an octave below the audible range, so nothing a listener hears changes
    # (-0.5 dB at 20 Hz, < 0.03 dB above 40 Hz).
    dc_block_hz: float = 10.0

    def remove_dc(self, waveform: torch.Tensor) -> torch.Tensor:
        r"""
        Removes the DC offset of `(..., num_samples)` waveforms without changing their gain: subtract each channel's
        mean, then a zero-phase 2nd-order Butterworth high-pass at `dc_block_hz` (`scipy.signal.sosfiltfilt`).

        Why both: a vocoder's offset is not always constant. Over a long clip it can follow the content (a bias
        that differs between loud and quiet passages), which a single mean leaves as slow local offsets; the
        high-pass removes those wherever they are. Subtracting the mean first means the filter starts from a
        zero-mean signal, so a large constant bias cannot leave a start-up transient. Forward-backward filtering
        has no phase shift: onsets keep their timing. The audio is never rescaled.

        Returns:
            `torch.Tensor` of the same shape, dtype and device.
        """
        from scipy.signal import butter, sosfiltfilt

        array = waveform.detach().to("cpu", torch.float64).numpy()
        array = array - array.mean(axis=-1, keepdims=True)
        sos = butter(2, self.dc_block_hz, btype="highpass", fs=self.sample_rate, output="sos")
        # sosfiltfilt pads by 3 * (2 * sections + 1) samples; shorter signals keep the mean removal alone.
        if array.shape[-1] > 3 * (2 * len(sos) + 1):
            array = sosfiltfilt(sos, array, axis=-1)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=waveform.device, dtype=waveform.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        video: VideoLike | list[VideoLike] | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        duration: float | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.5,
        num_waveforms_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        video_fps: float | None = None,
        max_sequence_length: int = 128,
        attention_kwargs: dict[str, Any] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
        timesteps: list[float] | np.ndarray | torch.Tensor | None = None,
        window_seconds: float | str | None = "auto",
        callback_on_output_block: Callable[[np.ndarray | torch.Tensor], None] | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> KlingFoleyPipelineOutput | tuple:
        r"""
        Generate audio for videos, prompts, or both.

        Args:
            video (path, bytes, array, tensor, [`VideoInput`], or a list of them, *optional*):
                Video(s) to generate sound for. The audio covers the video's duration (or `duration`).
            prompt (`str` or `list[str]`, *optional*):
                Text description(s). One prompt may be shared by all videos and one video by all prompts.
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces the learned empty text of the unconditional branch of classifier-free guidance.
            duration (`float`, *optional*):
                Seconds of audio. Required without `video`; with a video it may only shorten it.
            num_inference_steps (`int`, defaults to 20):
                Flow-matching steps (20 Euler steps = the paper's dt 0.05).
            guidance_scale (`float`, defaults to 4.5):
                Classifier-free guidance `uncond + s * (cond - uncond)`; off (one transformer pass per step, half
                the batch) when `<= 1`.
            num_waveforms_per_prompt (`int`, defaults to 1):
                Generations per clip/prompt (consecutive in the output batch).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                For reproducible noise; a list needs one generator per output.
            latents (`torch.Tensor`, *optional*):
                Initial noise `(batch, latent_channels, latent_frames)` instead of sampling it.
            output_type (`str`, defaults to `"np"`):
                `"np"` / `"pt"`: waveforms `(batch, channels, samples)`; `"mel"`: log-mels
                `(batch, channels, 128, mel_frames)`; `"latent"`: normalised latents.
            return_dict (`bool`, defaults to `True`):
                Return a [`KlingFoleyPipelineOutput`] rather than a tuple `(audios, sample_rate)`.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*):
                Called as `callback_on_step_end(pipe, step, timestep, callback_kwargs)` after each scheduler step;
                the tensors it returns (e.g. `{"latents": ...}`) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed in `callback_kwargs`; a subset of `_callback_tensor_inputs`.
            video_fps (`float`, *optional*):
                Frame rate of array/tensor videos.
            max_sequence_length (`int`, defaults to 128):
                T5 token count the prompts are padded (and truncated) to. Before the transformer, trailing padding
                shared by all prompts and negative prompts is dropped (`trim_text_padding`); the audio is the same.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention processors (e.g. `{"scale": 0.5}` for LoRA).
            prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed text embeddings `(batch, sequence, 768)` instead of `prompt` (e.g. from `encode_prompt`,
                to reuse or edit them); batch 1 is shared by all videos. Needs `prompt_attention_mask`.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed embeddings instead of `negative_prompt`; same token count as `prompt_embeds`. Needs
                `negative_prompt_attention_mask`.
            prompt_attention_mask, negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                `(batch, sequence)` masks of the embeddings above, 1 = real token, as `encode_prompt` returns them.
            sigmas (`list[float]`, *optional*):
                Custom noise levels, strictly decreasing in (0, 1] (the scheduler appends the final 0); their count
                sets the number of steps. Defaults to Flux's `linspace(1, 1 / num_inference_steps,
                num_inference_steps)`.
            timesteps (`list[float]`, *optional*):
                Custom timesteps in (0, `num_train_timesteps`] instead of `sigmas` (not both).
            window_seconds (`float`, `"auto"` or `None`, defaults to `"auto"`):
                Long-form generation: a clip longer than this (by more than `window_margin_seconds`) is generated in
                overlapping windows of this length, each conditioned on the previous window's tail and decoded,
                joined and vocoded in chunks, so time grows linearly and memory stays flat with the clip's length
                (see `long_form`). `"auto"`: the transformer config's `trained_seconds`, else
                `default_window_seconds` (10 s). `None`: one pass over the whole clip (attention grows with the
                square of its length).
            callback_on_output_block (`Callable`, *optional*):
                Called with each finished block of the output (`(batch, channels, n)` for waveforms, in
                `output_type`), in order, as soon as it is produced; the returned output then holds `audios=None`.
                With windows, blocks are a few seconds long, so a caller that writes them out (`foley-toolkit
                generate`) never holds the whole waveform. Without windows it is called once.
            guidance_interval (`tuple[float, float]`, *optional*):
                Apply classifier-free guidance only at the steps whose noise level sigma lies in `[low, high]`
                (guidance in a limited interval, Kynkaanniemi et al. 2024); the other steps run the conditional
                branch alone (half the batch). `None` (the default) guides every step; it changes nothing without
                guidance.

        Examples:

        Returns:
            [`KlingFoleyPipelineOutput`] or `tuple`: the audio and its sample rate.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs
        batch_size = self.check_inputs(
            video,
            prompt,
            negative_prompt,
            duration,
            num_inference_steps,
            num_waveforms_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
            guidance_scale=guidance_scale,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            sigmas=sigmas,
            timesteps=timesteps,
            max_sequence_length=max_sequence_length,
        )
        self._guidance_scale = guidance_scale
        self._guidance_interval = self._check_guidance_interval(guidance_interval)
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        device = self._execution_device
        do_cfg = self.do_classifier_free_guidance

        # 2. Decode each video once, exactly as long as needed, then encode it once: the same features serve every
        # step. All lengths of the generation come from one `sequence_lengths` of the components' configs. A clip
        # longer than `window_seconds` is generated window by window instead (the long branch after step 3): its
        # video is decoded here only far enough to tell, each window decodes and encodes its own stretch later.
        window_seconds = self._resolve_window_seconds(window_seconds)
        decode_limit = duration
        if window_seconds is not None:
            decode_limit = min(window_seconds + self.window_margin_seconds, duration or math.inf)
        clip_features = sync_features = None
        if video is not None:
            clips = self.load_videos(video, video_fps=video_fps, duration=decode_limit)
            long_clip = window_seconds is not None and max(clip.duration for clip in clips) >= decode_limit - 1e-6
            if long_clip:
                clips = None  # each window decodes its own stretch
                duration = long_form.resolve_video_duration(self, video, duration, video_fps)
            else:
                duration = self._resolve_video_duration(clips, duration)
        else:
            long_clip = window_seconds is not None and duration > window_seconds + self.window_margin_seconds
        lengths = self.sequence_lengths(float(duration))
        if video is not None and not long_clip:
            clip_features, sync_features = self._encode_video_frames(clips, lengths, device)
            if clip_features.shape[0] == 1 and batch_size > 1:
                clip_features = clip_features.expand(batch_size, -1, -1)
                sync_features = sync_features.expand(batch_size, -1, -1)
        duration = float(duration)
        num_samples = lengths["num_samples"]
        # Enough latent frames to cover every sample (each decodes to 2 mel frames x 512 samples).
        latent_frames = lengths["audio_tokens"]

        # 3. Encode the prompts
        if prompt is not None:
            prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
            prompts = prompts * batch_size if len(prompts) == 1 else prompts
        else:
            prompts = None
        negatives = negative_prompt
        if negatives is not None:
            negatives = [negatives] if isinstance(negatives, str) else list(negatives)
            negatives = negatives * batch_size if len(negatives) == 1 else negatives

        def broadcast(x):  # precomputed batch-1 embeddings are shared, like a single prompt
            return x.expand(batch_size, *x.shape[1:]) if x is not None and x.shape[0] == 1 else x

        prompt_embeds, prompt_mask, negative_embeds, negative_mask = self.encode_prompt(
            prompts,
            device=device,
            num_waveforms_per_prompt=num_waveforms_per_prompt,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negatives,
            max_sequence_length=max_sequence_length,
            prompt_embeds=broadcast(prompt_embeds),
            negative_prompt_embeds=broadcast(negative_prompt_embeds),
            prompt_attention_mask=broadcast(prompt_attention_mask),
            negative_prompt_attention_mask=broadcast(negative_prompt_attention_mask),
        )
        # Only the longest real prompt's tokens reach the transformer (padding is masked there anyway).
        prompt_embeds, prompt_mask, negative_embeds, negative_mask = self.trim_text_padding(
            prompt_embeds, prompt_mask, negative_embeds, negative_mask
        )

        total_batch = batch_size * num_waveforms_per_prompt
        if clip_features is not None:
            clip_features = clip_features.repeat_interleave(num_waveforms_per_prompt, dim=0)
            sync_features = sync_features.repeat_interleave(num_waveforms_per_prompt, dim=0)

        if long_clip:
            # 4.-8. for a clip longer than one window: overlapping windows, each conditioned on the previous one's
            # tail, joined in log-mel space, vocoded in chunks; the output comes block by block (see `long_form`).
            blocks = long_form.generate_long_form(
                self,
                long_form.plan_for_duration(self, duration, window_seconds),
                video,
                video_fps,
                duration,
                batch_size,
                num_waveforms_per_prompt,
                (prompt_embeds, prompt_mask, negative_embeds, negative_mask),
                num_inference_steps,
                generator=generator,
                latents=latents,
                output_type=output_type,
                sigmas=sigmas,
                timesteps=timesteps,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                device=device,
            )
            return self._output(blocks, output_type, return_dict, callback_on_output_block)

        # 4. Timestep-independent conditions, computed once and reused at every step; with guidance the batch is
        # [uncond, cond].
        transformer_dtype = self.transformer.dtype
        conditions = self.prepare_transformer_conditions(
            latent_frames,
            total_batch,
            duration,
            prompt_embeds,
            prompt_mask,
            negative_embeds,
            negative_mask,
            clip_features,
            sync_features,
            do_cfg,
            device,
            transformer_dtype,
        )

        # 5. Timesteps
        timesteps = self._set_timesteps(num_inference_steps, device, latent_frames, sigmas=sigmas, timesteps=timesteps)
        self._num_timesteps = len(timesteps)

        # 6. Initial noise. The scheduler integrates in float32 whatever the weights' dtype.
        latents = self.prepare_latents(
            total_batch,
            self.transformer.config.in_channels,
            latent_frames,
            torch.float32,
            device,
            generator,
            latents,
        )

        # 7. Denoising loop
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            latents = self.denoise(
                latents,
                conditions,
                timesteps,
                generator,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                progress_bar=progress_bar,
            )

        # 8. Decode: latents -> mel (mono, then left/right) -> waveform per channel -> exact length
        if output_type == "latent":
            audios = latents
        else:
            mel = self.decode_latents(latents, clip_features)
            if output_type == "mel":
                audios = mel[..., : lengths["output_mel_frames"]].float()
            else:
                audios = self.mel_to_waveform(mel, num_samples)
        return self._output([audios], output_type, return_dict, callback_on_output_block)

    def _output(
        self, blocks, output_type: str, return_dict: bool, callback_on_output_block: Callable | None
    ) -> KlingFoleyPipelineOutput | tuple:
        """The call's result from its output `blocks` (consecutive along the last axis): each passed to
        `callback_on_output_block` as soon as it exists (the result then holds `audios=None`), or concatenated."""

        def convert(block: torch.Tensor):
            return block.cpu().float().numpy() if output_type in ("np", "mel") else block

        if callback_on_output_block is not None:
            for block in blocks:
                callback_on_output_block(convert(block))
            audios = None
        else:
            blocks = list(blocks)
            audios = convert(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1))

        self.maybe_free_model_hooks()

        if not return_dict:
            return (audios, self.sample_rate)
        return KlingFoleyPipelineOutput(audios=audios, sample_rate=self.sample_rate)

    def _resolve_window_seconds(self, window_seconds: float | str | None) -> float | None:
        """`"auto"` -> the transformer config's `trained_seconds` if recorded, else `default_window_seconds`; `None`
        (one pass) and positive seconds pass through; anything else raises `ValueError` naming `window_seconds`."""
        if window_seconds is None:
            return None
        if isinstance(window_seconds, str) and window_seconds == "auto":
            trained = getattr(self.transformer.config, "trained_seconds", None)
            return float(trained) if trained else self.default_window_seconds
        valid = isinstance(window_seconds, (int, float)) and not isinstance(window_seconds, bool)
        if not valid or not (math.isfinite(window_seconds) and window_seconds > 0):
            raise ValueError(
                f"`window_seconds` must be a positive number of seconds, None (one pass) or 'auto', got "
                f"{window_seconds!r}."
            )
        return float(window_seconds)

    def prepare_transformer_conditions(
        self,
        num_audio_tokens: int,
        batch_size: int,
        duration: float,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        negative_attention_mask: torch.Tensor | None,
        clip_features: torch.Tensor | None,
        sync_features: torch.Tensor | None,
        do_classifier_free_guidance: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> FoleyMMDiTConditions:
        r"""
        The transformer's timestep-independent conditions ([`FoleyMMDiTTransformer.prepare_conditions`]) for a
        `batch_size` batch, doubled to `[uncond, cond]` with guidance. The unconditional half uses the
        transformer's learned empty embeddings (`drop_*` masks) for every modality, except the text, which is the
        negative prompt when one is given. `seconds_start = 0`, `seconds_total = duration`.
        """

        def cast(x):
            return None if x is None else x.to(device=device, dtype=dtype)

        seconds_start = torch.zeros(batch_size, device=device, dtype=torch.float32)
        seconds_total = torch.full((batch_size,), float(duration), device=device, dtype=torch.float32)
        if not do_classifier_free_guidance:
            kwargs = {
                "encoder_hidden_states": cast(prompt_embeds),
                "encoder_attention_mask": None if prompt_attention_mask is None else prompt_attention_mask.to(device),
                "clip_features": cast(clip_features),
                "sync_features": cast(sync_features),
                "seconds_start": seconds_start,
                "seconds_total": seconds_total,
            }
        else:

            def flags(uncond: bool, cond: bool) -> torch.Tensor:
                return torch.tensor([uncond] * batch_size + [cond] * batch_size, device=device)

            kwargs = {"seconds_start": seconds_start.repeat(2), "seconds_total": seconds_total.repeat(2)}
            if prompt_embeds is not None or negative_prompt_embeds is not None:
                # A missing side (no prompt, or no negative prompt) is filled with zeros and marked as dropped: the
                # transformer swaps in its learned empty text there.
                reference = prompt_embeds if prompt_embeds is not None else negative_prompt_embeds
                reference_mask = prompt_attention_mask if prompt_embeds is not None else negative_attention_mask
                has_negative = negative_prompt_embeds is not None
                uncond = negative_prompt_embeds if has_negative else torch.zeros_like(reference)
                uncond_mask = negative_attention_mask if has_negative else reference_mask
                cond = prompt_embeds if prompt_embeds is not None else torch.zeros_like(reference)
                cond_mask = prompt_attention_mask if prompt_embeds is not None else reference_mask
                kwargs["encoder_hidden_states"] = cast(torch.cat([uncond, cond]))
                kwargs["encoder_attention_mask"] = torch.cat([uncond_mask, cond_mask]).to(device)
                kwargs["drop_text"] = flags(not has_negative, prompt_embeds is None)
            if clip_features is not None:
                kwargs["clip_features"] = cast(torch.cat([clip_features, clip_features]))
                kwargs["sync_features"] = cast(torch.cat([sync_features, sync_features]))
                kwargs["drop_clip"] = flags(True, False)
                kwargs["drop_sync"] = flags(True, False)
            batch_size = 2 * batch_size

        # `prepare_conditions` is not `forward`: move an offloaded transformer to the device by hand.
        self._onload(self.transformer)
        return self.transformer.prepare_conditions(num_audio_tokens, batch_size=batch_size, **kwargs)

    @staticmethod
    def _onload(module: torch.nn.Module) -> None:
        """Run the accelerate offload hook of `module` (if any) so that it sits on the execution device."""
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(module)
