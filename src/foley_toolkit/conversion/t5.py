"""T5-Base text encoder + tokenizer: copied and checked into one folder the pipeline loads.

`google-t5/t5-base` loads natively with transformers (`T5EncoderModel`; the decoder weights of the full model are
dropped), so the converter only loads it strictly, checks the tokenizer against the model (special-token ids,
vocabulary inside the embedding table) and writes both to one `save_pretrained` folder, with the tokenizer's
`model_max_length` set to the text length the pipeline uses.
"""

from __future__ import annotations

import inspect
import os
from typing import Optional, Tuple

from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5EncoderModel

from .common import prepare_output_dir, print_licence, quiet_transformers_loading, raise_key_problems

__all__ = ["T5_MAX_SEQUENCE_LENGTH", "convert_t5"]


def _pipeline_max_sequence_length() -> int:
    # The one place the text length is set is the pipeline's `__call__` default; read it from there.
    from ..pipelines.kling_foley.pipeline_kling_foley import KlingFoleyPipeline

    return int(inspect.signature(KlingFoleyPipeline.__call__).parameters["max_sequence_length"].default)


# Tokens per caption the pipeline encodes (T5 tokens incl. `</s>`), as in Stable Audio's T5 conditioner; the
# Kling-Foley paper does not state its own. The converted tokenizer's `model_max_length`.
T5_MAX_SEQUENCE_LENGTH: int = _pipeline_max_sequence_length()

# Keys of a full T5 (`T5ForConditionalGeneration`) that the encoder-only model does not use.
_DECODER_PREFIXES = ("decoder.", "lm_head.")


def convert_t5(
    checkpoint: str | os.PathLike, output_dir: Optional[str | os.PathLike] = None
) -> Tuple[T5EncoderModel, PreTrainedTokenizerBase]:
    r"""
    Load a T5 (encoder or full model) and its tokenizer, check them, and (optionally) `save_pretrained` both.

    Args:
        checkpoint (`str` or `os.PathLike`): A transformers folder or Hub id (e.g. `google-t5/t5-base`) holding the
            model (`config.json` + safetensors, or `pytorch_model.bin`, read with `weights_only=True`) and tokenizer.
        output_dir (`str` or `os.PathLike`, *optional*): Empty or new folder; the pipeline loads it as both
            `text_encoder` and `tokenizer`.

    Returns:
        `(T5EncoderModel, tokenizer)`; the tokenizer's `model_max_length` is `T5_MAX_SEQUENCE_LENGTH`.
    """
    output_dir = prepare_output_dir(output_dir)
    checkpoint = os.fspath(checkpoint)
    if not os.path.isdir(checkpoint) and (checkpoint.count("/") != 1 or checkpoint.startswith((".", "/"))):
        raise FileNotFoundError(f"`checkpoint` {checkpoint!r} is neither a folder nor a Hub repo id.")
    try:
        with quiet_transformers_loading():
            model, info = T5EncoderModel.from_pretrained(checkpoint, output_loading_info=True, weights_only=True)
    except Exception as error:  # truncated safetensors, bad JSON, missing files: one clear line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"T5 checkpoint {checkpoint!r} could not be loaded: {type(error).__name__}: {message}"
        ) from error
    missing = sorted(info.get("missing_keys", ()))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(_DECODER_PREFIXES))
    mismatched = [f"{key}: {tuple(a)} vs {tuple(b)}" for key, a, b in info.get("mismatched_keys", ())]
    raise_key_problems(f"T5 checkpoint {checkpoint!r} does not match its config", missing, unexpected, mismatched)

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, model_max_length=T5_MAX_SEQUENCE_LENGTH)
    except (OSError, ValueError) as error:
        raise ValueError(f"T5 checkpoint {checkpoint!r} has no loadable tokenizer: {error}") from error
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"T5 tokenizer of {checkpoint!r} has {len(tokenizer)} tokens, more than the model's vocab_size {config.vocab_size}."
        )
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name) != getattr(config, name):
            raise ValueError(
                f"T5 tokenizer `{name}` {getattr(tokenizer, name)} differs from the model config's {getattr(config, name)}."
            )
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    print_licence("t5")
    return model, tokenizer
