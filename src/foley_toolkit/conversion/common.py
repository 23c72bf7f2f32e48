"""What every converter shares: finding a checkpoint (local path or Hub id), reading it without unpickling code
(`torch.load(weights_only=True)` or safetensors), unwrapping the dict it is stored in, checking a converted state
dict key by key and shape by shape against the target model, and printing the licence of what was converted."""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch

# Licence of each public part (code / weights), printed by every converter and stated in model cards.
LICENCES: Dict[str, Dict[str, str]] = {
    "bigvgan": {
        "name": "NVIDIA BigVGAN-v2 (bigvgan_v2_44khz_128band_512x)",
        "code": "MIT",
        "weights": "MIT",
        "source": "https://huggingface.co/nvidia/bigvgan_v2_44khz_128band_512x",
    },
    "synchformer": {
        "name": "Synchformer (MotionFormer ViT-B/16 visual branch)",
        "code": "MIT",
        "weights": "no separate weights licence stated (code MIT)",
        "source": "https://github.com/v-iashin/Synchformer",
    },
    "metaclip": {
        "name": "MetaCLIP ViT-bigG-14-quickgelu (fullcc2.5b)",
        "code": "CC-BY-NC-4.0 (mostly)",
        "weights": "CC-BY-NC-4.0 (non-commercial)",
        "source": "https://github.com/facebookresearch/MetaCLIP",
    },
    "t5": {
        "name": "T5-Base (google-t5/t5-base)",
        "code": "Apache-2.0",
        "weights": "Apache-2.0",
        "source": "https://huggingface.co/google-t5/t5-base",
    },
}

# Licences that forbid commercial use; flagged when printed.
NON_COMMERCIAL_MARKERS = ("NC", "non-commercial")


def licence_text(part: str) -> str:
    """One line naming `part`'s code and weights licences, with a warning for non-commercial ones."""
    info = LICENCES[part]
    text = f"{info['name']}: code {info['code']}, weights {info['weights']} ({info['source']})"
    if any(marker in info["weights"] for marker in NON_COMMERCIAL_MARKERS):
        text += ". WARNING: non-commercial licence; a pipeline containing these weights inherits it"
    return text


def print_licence(part: str) -> None:
    print(f"Licence of the converted weights: {licence_text(part)}.")


def resolve_checkpoint_file(
    checkpoint: str | os.PathLike, default_filename: str, argument: str = "checkpoint", companions: Iterable[str] = ()
) -> str:
    """A local file, a local folder holding `default_filename`, or a Hub repo id (`owner/name`) whose
    `default_filename` is downloaded with `huggingface_hub.hf_hub_download` (the cache serves it offline), together
    with the `companions` files the repo has (e.g. `config.json`; they land next to it in the cache)."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isfile(checkpoint):
        return checkpoint
    if os.path.isdir(checkpoint):
        path = os.path.join(checkpoint, default_filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`{argument}` folder {checkpoint!r} holds no {default_filename!r}.")
        return path
    looks_like_repo_id = checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~"))
    if not looks_like_repo_id or os.path.splitext(checkpoint)[1] in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
        raise FileNotFoundError(f"`{argument}` {checkpoint!r} is neither a file, a folder nor a Hub repo id.")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(checkpoint, default_filename)
    except Exception as error:  # offline, unknown repo, missing file: one clear line
        raise FileNotFoundError(
            f"`{argument}` {checkpoint!r} is not a local path and {default_filename!r} could not be fetched from the "
            f"Hub repo of that name ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
        ) from error
    for companion in companions:
        try:
            hf_hub_download(checkpoint, companion)
        except Exception:  # optional: the caller falls back to its default when the file is absent
            pass
    return path


def load_checkpoint(path: str | os.PathLike, argument: str = "checkpoint") -> Mapping:
    """Read a checkpoint without running pickled code: `.safetensors` with safetensors, anything else with
    `torch.load(weights_only=True)` on CPU. A file that is missing raises `FileNotFoundError`; one that is not a
    checkpoint, truncated, or needs arbitrary unpickling raises `ValueError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{argument}` {path!r} does not exist.")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`{argument}` {path!r} could not be read as a checkpoint (truncated, not a torch/safetensors file, or "
            f"it holds objects other than tensors, which are never unpickled): {type(error).__name__}: {message}"
        ) from error


def unwrap_state_dict(
    obj, path: str, wrappers: Iterable[str], strip_prefixes: Iterable[str] = ()
) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: the first of `wrappers` present (e.g. `generator`,
    `state_dict`, `model`), else `obj` itself; `strip_prefixes` (e.g. DistributedDataParallel's `module.`) are
    removed from keys that carry them."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path!r} holds a {type(obj).__name__}, expected a dict of tensors.")
    for wrapper in wrappers:
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    state_dict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # optimiser steps, epochs, configs stored next to the weights
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        state_dict[key] = value
    if not state_dict:
        raise ValueError(
            f"checkpoint {path!r} holds no tensors under {', '.join(repr(w) for w in wrappers)} or at its top level."
        )
    return state_dict


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    source: str,
    max_listed: int = 5,
    origin: Optional[Mapping[str, str]] = None,
) -> None:
    """Refuse a converted state dict that does not fill `model` exactly: missing keys, unexpected keys and shape
    mismatches each raise `ValueError` naming (up to `max_listed` of) the offending keys and `source`. Key names in
    the message are the target model's (after conversion)."""
    expected = model.state_dict()
    origin = origin or {}

    def name(key):
        return f"{key} (checkpoint `{origin[key]}`)" if key in origin and origin[key] != key else key

    missing = [key for key in expected if key not in state_dict]
    unexpected = [name(key) for key in state_dict if key not in expected]
    mismatched = [
        f"{name(key)}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]

    raise_key_problems(
        f"{source} does not match {type(model).__name__} of the given config", missing, unexpected, mismatched,
        max_listed,
    )  # fmt: skip


def raise_key_problems(
    what: str, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str], max_listed: int = 5
) -> None:
    """Raise one `ValueError` ``"<what>: missing keys ...; unexpected keys ...; wrong shapes ..."`` listing up to
    `max_listed` entries of each non-empty list; do nothing when all three are empty."""

    def listed(keys):
        more = f" (and {len(keys) - max_listed} more)" if len(keys) > max_listed else ""
        return ", ".join(keys[:max_listed]) + more

    problems = [
        f"{label} {listed(list(keys))}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems) + ".")


@contextlib.contextmanager
def quiet_transformers_loading():
    """No transformers "Loading weights" progress bars or load reports while loading parts (restored afterwards):
    the converters check the keys themselves and say what is wrong in their own errors."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if enabled:
            transformers_logging.enable_progress_bar()


def num_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (buffers such as fixed filters are not counted)."""
    return sum(p.numel() for p in model.parameters())


def prepare_output_dir(output_dir: Optional[str | os.PathLike], argument: str = "out") -> Optional[str]:
    """Refuse an existing non-empty folder (a conversion never mixes its files with old ones)."""
    if output_dir is None:
        return None
    output_dir = os.fspath(output_dir)
    if os.path.isfile(output_dir) or (os.path.isdir(output_dir) and os.listdir(output_dir)):
        raise ValueError(f"`{argument}` {output_dir!r} already exists and is not an empty folder.")
    return output_dir
