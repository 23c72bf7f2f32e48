"""Outputs of training runs written so that a reader, a concurrent run or a crash never sees a partial file.

Every file or folder a run produces (weights, logs, summaries, checkpoints, feature files) is written under a
temporary name in the same folder and renamed onto its final name once complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

TEMPORARY_MARKER = ".tmp"


def replace_path(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the complete `tmp` (a file or folder in the same folder) to `path`. A folder already at `path`
    (``os.replace`` cannot overwrite a non-empty one) is first renamed aside and removed after the swap, so `path`
    always holds a whole version."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir() and path.exists():
        old = path.with_name(f".{path.name}.old{TEMPORARY_MARKER}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def _error_naming(error: OSError, path: str | os.PathLike) -> OSError:
    """`error` again (same errno, so the same subclass: a full disk stays an ENOSPC `OSError`) with `path` named."""
    reason = error.strerror or str(error)
    return OSError(error.errno, f"{reason} (while writing {os.fspath(path)})")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, is_dir: bool = False) -> Iterator[str]:
    r"""
    Write an output file (or folder) under a temporary name in the same folder and rename it onto `path` once the
    writer has finished: a reader polling `path`, a concurrent run or a crash never sees a partial or empty output.

    The temporary name keeps the extension (``.{name}.XXXX.tmp{ext}``), so writers that pick the format from it
    (soundfile, safetensors) behave the same. A folder is swapped in with two renames when `path` already exists.
    On failure the temporary output is removed; an `OSError` (a full disk, a read-only folder) is raised again with
    the same errno and the path it was writing.

    Args:
        path (`str` or `os.PathLike`): The final file or folder.
        is_dir (`bool`): Yield an empty temporary folder instead of a file path.

    Yields:
        `str`: The temporary path to write to.
    """
    path = Path(path).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_MARKER, dir=path.parent)
        else:
            suffix = TEMPORARY_MARKER + path.suffix
            handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            os.close(handle)
    except OSError as error:
        raise _error_naming(error, path) from error
    try:
        yield tmp
        # mkstemp/mkdtemp make private entries: give them the mode of a normal new file or folder.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        replace_path(tmp, path)
    except BaseException as error:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(error, OSError) and os.fspath(path) not in str(error):
            raise _error_naming(error, path) from error
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` (UTF-8) to `path` through `atomic_output`; returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return os.fspath(path)


def atomic_save_pretrained(module: Any, folder: str | os.PathLike, **kwargs) -> str:
    """``module.save_pretrained`` into a temporary folder renamed onto `folder` (see `atomic_output`)."""
    with atomic_output(folder, is_dir=True) as tmp:
        module.save_pretrained(tmp, **kwargs)
    return os.fspath(folder)


def non_finite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of `tensors` holding a NaN or an infinity (other values are ignored)."""
    return [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
