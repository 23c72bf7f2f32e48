r"""On-disk cache of extractor outputs, keyed by the file's content hash and the extractor.

An entry is ``<root>/<extractor.cache_key>/<sha256[:2]>/<sha256>.safetensors`` holding the tensors `extract`
returned (``embedding``, ``logits``). The key is the SHA-256 of the file's bytes, so a renamed or copied file hits
the cache and an edited one misses it; `extractor.cache_key` covers the model, its weights and its preprocessing, so
a different checkpoint or crop length never reads another's entries. Entries are written to a temporary file and
renamed into place, so an interrupted run never leaves a truncated entry.
"""

from __future__ import annotations

import hashlib
import os

import torch

from .extractors.base import AudioFeatureExtractor


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> str:
    """``$FOLEY_TOOLKIT_CACHE`` or ``$XDG_CACHE_HOME/foley_toolkit`` (``~/.cache/foley_toolkit``), + ``/embeddings``."""
    root = os.environ.get("FOLEY_TOOLKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "foley_toolkit"
    )
    return os.path.join(root, "embeddings")


class EmbeddingCache:
    r"""
    Extractor outputs stored per (file content, extractor).

    Args:
        root (`str` or `os.PathLike`): Cache folder (created on the first write).

    Attributes:
        hits (`int`), misses (`int`): Counts since construction.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.hits = 0
        self.misses = 0

    def entry_path(self, file_hash: str, extractor: AudioFeatureExtractor) -> str:
        return os.path.join(self.root, extractor.cache_key, file_hash[:2], f"{file_hash}.safetensors")

    def get(self, file_hash: str, extractor: AudioFeatureExtractor) -> dict[str, torch.Tensor] | None:
        """The stored outputs, or None (a missing or unreadable entry is a miss)."""
        from safetensors.torch import load_file

        path = self.entry_path(file_hash, extractor)
        if not os.path.isfile(path):
            return None
        try:
            return load_file(path)
        except Exception:  # a damaged entry (disk full, foreign file): recompute it
            return None

    def put(self, file_hash: str, extractor: AudioFeatureExtractor, outputs: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.entry_path(file_hash, extractor)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({key: value.contiguous() for key, value in outputs.items()}, tmp)
        os.replace(tmp, path)

    def lookup(
        self, path: str | os.PathLike, extractor: AudioFeatureExtractor
    ) -> tuple[str, dict[str, torch.Tensor] | None]:
        """``(file hash, stored outputs or None)``, counted as a hit or a miss."""
        file_hash = file_sha256(path)
        outputs = self.get(file_hash, extractor)
        if outputs is None:
            self.misses += 1
        else:
            self.hits += 1
        return file_hash, outputs

    def extract_file(self, path: str | os.PathLike, extractor: AudioFeatureExtractor) -> dict[str, torch.Tensor]:
        """`extractor`'s outputs for the file at `path`, from the cache when its content was seen before."""
        file_hash, outputs = self.lookup(path, extractor)
        if outputs is None:
            outputs = extractor.extract_prepared(extractor.load(path))
            self.put(file_hash, extractor, outputs)
        return outputs
