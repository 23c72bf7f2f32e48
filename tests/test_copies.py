"""`# Copied from foley_toolkit.x.Name` (or `diffusers.x.Name`) marks a class or function kept as an exact copy so
that a file stays self-contained (diffusers' convention, checked there by `make fix-copies`): the copy must stay
identical to its original (diffusers is pinned to one minor release in setup.py)."""

import ast
import importlib
import inspect
import os
import re

import foley_toolkit

PACKAGE_DIR = os.path.dirname(os.path.abspath(foley_toolkit.__file__))
COPIED_FROM = re.compile(r"^# Copied from ((?:foley_toolkit|diffusers)(?:\.\w+)+)\s*$")


def marked_copies():
    """(file, name of the copy, dotted name of the original, source of the copy) for every marked definition."""
    for root, _, files in os.walk(PACKAGE_DIR):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, file)
            source = open(path, encoding="utf-8").read()
            lines = source.splitlines()
            for node in ast.parse(source).body:
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    continue
                match = COPIED_FROM.match(lines[node.lineno - 2]) if node.lineno >= 2 else None
                if match:
                    yield path, node.name, match.group(1), "\n".join(lines[node.lineno - 1 : node.end_lineno])


def test_copies_equal_their_originals():
    copies = list(marked_copies())
    assert {(os.path.basename(path), name) for path, name, _, _ in copies} >= {
        ("mono2stereo.py", "ChannelLayerNorm"),
        ("mono2stereo.py", "MelResnetBlock1D"),
        ("scheduling_kling_foley.py", "calculate_shift"),
        ("scheduling_kling_foley.py", "retrieve_timesteps"),
    }
    for path, name, original, copy_source in copies:
        module_name, _, attribute = original.rpartition(".")
        original_source = inspect.getsource(getattr(importlib.import_module(module_name), attribute)).rstrip()
        assert copy_source == original_source, f"{path}: {name} is no longer a copy of {original}"
