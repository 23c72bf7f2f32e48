"""docs/architecture.md cannot rot: every path and every Python name it puts in backticks exists.

Rules (outside fenced code blocks):
- a token with a `/` or a file suffix is a path from the repository root and must exist;
- a dotted name starting with `foley_toolkit.` must import (module, then attributes);
- in a table row that names a `.py` file or a package folder under `src/`, every other identifier (`Name`,
  `Name.attribute`) must be an attribute of that module;
- anything else in backticks (code such as `pipe(video=...)`) is not checked.
"""

import importlib
import re
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PATH_SUFFIXES = (".py", ".md", ".sh", ".json", ".yaml", ".toml")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def doc_lines() -> list[str]:
    lines, fenced = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def is_path(token: str) -> bool:
    return "/" in token or token.endswith(PATH_SUFFIXES)


def module_of(path: str) -> str | None:
    """`src/foley_toolkit/a/b.py` -> `foley_toolkit.a.b`; `src/foley_toolkit/a/` -> `foley_toolkit.a`."""
    if not path.startswith("src/foley_toolkit"):
        return None
    if path.endswith(".py"):
        path = path[: -len(".py")]
    elif not (REPO / path).is_dir():
        return None
    return path.rstrip("/")[len("src/") :].replace("/", ".")


def resolve(module_name: str, attributes: list[str]):
    """Import `module_name` and follow `attributes`; raises naming what is missing."""
    obj = importlib.import_module(module_name)
    for attribute in attributes:
        if not hasattr(obj, attribute):
            raise AssertionError(f"{module_name}: no attribute {'.'.join(attributes)!r}")
        obj = getattr(obj, attribute)
    return obj


def resolve_dotted(name: str):
    """`foley_toolkit.x.y.Name.attr`: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        return resolve(".".join(parts[:split]), parts[split:])
    raise AssertionError(f"no module of {name!r} imports")


def references() -> list[tuple[str, str | None]]:
    """(token, module the token must belong to or None) for every checked token of the doc."""
    found = []
    for line in doc_lines():
        tokens = re.findall(r"`([^`]+)`", line)
        row_modules = [module_of(t) for t in tokens if is_path(t)] if line.startswith("|") else []
        row_modules = [m for m in row_modules if m]
        for token in tokens:
            if is_path(token) or token.startswith("foley_toolkit."):
                found.append((token, None))
            elif row_modules and IDENTIFIER.match(token):
                found.append((token, row_modules[0]))
    return found


def test_the_doc_names_paths_and_names_at_all():
    refs = references()
    assert sum(is_path(token) for token, _ in refs) >= 20
    assert sum(module is not None for _, module in refs) >= 20
    assert any(token.startswith("foley_toolkit.") for token, _ in refs)


@pytest.mark.parametrize("token,module", references(), ids=lambda value: str(value))
def test_every_reference_exists(token, module):
    if is_path(token):
        assert (REPO / token).exists(), f"docs/architecture.md names {token!r}, which does not exist"
    elif module is None:
        resolve_dotted(token)
    else:
        resolve(module, token.split("."))


def test_readme_links_the_architecture_page():
    assert "(docs/architecture.md)" in (REPO / "README.md").read_text(encoding="utf-8")
