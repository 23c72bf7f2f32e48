r"""CLAP score: cosine similarity between the text embedding of a clip's caption and the audio embedding of the
generated clip, averaged over clips (av-benchmark's ``LAION-CLAP-Score``).

av-benchmark uses LAION-CLAP's HTSAT-base ``music_speech_audioset_epoch_15_esc_89.98.pt`` (no fusion) on 48 kHz
audio cropped to 8 s. This extractor runs the 🤗 transformers port of LAION-CLAP (`ClapModel`, e.g. the Hub
repositories ``laion/larger_clap_general`` / ``laion/clap-htsat-unfused``) so that no extra package is needed;
which Hub repository holds exactly av-benchmark's checkpoint is for the user to check on its model card.
Audio goes through the model's own `ClapFeatureExtractor` (48 kHz log-mel, clips under 10 s repeated to 10 s
(``repeatpad``), longer ones cut to their first 10 s here so that the score is deterministic).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from .base import AudioFeatureExtractor


def _features(output) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooled projection is the embedding; 4.x returned the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapExtractor(AudioFeatureExtractor):
    r"""
    CLAP audio and text embeddings.

    Args:
        model (`transformers.ClapModel`): The model.
        feature_extractor (`transformers.ClapFeatureExtractor`): Its audio front end.
        tokenizer: Its text tokenizer.
        device (`str` or `torch.device`, *optional*): Where it runs.
        max_seconds (`float`, *optional*, defaults to 8.0): Crop (av-benchmark's ``audio_length``).
    """

    name = "clap"

    def __init__(self, model, feature_extractor, tokenizer, device=None, max_seconds: float | None = 8.0):
        self.model = model.eval() if device is None else model.to(device).eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.embedding_dim = int(model.config.projection_dim)
        self.fusion = bool(getattr(model.config.audio_config, "enable_fusion", False))
        super().__init__(max_seconds=max_seconds)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, device=None, **kwargs) -> "ClapExtractor":
        """Model, feature extractor and tokenizer from one local folder or Hub repository."""
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        source = os.fspath(path_or_repo_id)
        max_seconds = kwargs.pop("max_seconds", 8.0)
        try:
            model = ClapModel.from_pretrained(source, **kwargs)
            feature_extractor = AutoFeatureExtractor.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as error:
            raise FileNotFoundError(
                f"`--clap` {source!r}: no CLAP model (ClapModel + feature extractor + tokenizer) there ({error})."
            ) from error
        return cls(model, feature_extractor, tokenizer, device=device, max_seconds=max_seconds)

    def config(self) -> dict:
        model_config = {k: v for k, v in self.model.config.to_dict().items() if not k.startswith("_")}
        return {**super().config(), "model": model_config, "features": self.feature_extractor.to_dict()}

    def _forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        audio = waveform[0, : self.feature_extractor.nb_max_samples].cpu().numpy()
        inputs = self.feature_extractor(
            [audio],
            sampling_rate=self.sample_rate,
            truncation="fusion" if self.fusion else "rand_trunc",
            padding="repeatpad",
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        return {"embedding": _features(self.model.get_audio_features(**inputs))}

    @torch.inference_mode()
    def embed_text(self, captions: Sequence[str]) -> torch.Tensor:
        """`(len(captions), embedding_dim)` text embeddings."""
        if not captions:
            raise ValueError("`captions` is empty.")
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
        tokens = {key: value.to(device) for key, value in tokens.items() if key in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**tokens)).float().cpu()
