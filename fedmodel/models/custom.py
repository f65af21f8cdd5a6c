"""A site's own model: ``model.name = "custom"`` with ``model.factory = "package.module:function"``.

Importing a module runs its code, so a node must decide *before* the import whether it trusts
that code. It trusts only what it can check on its own disk: the SHA-256 of the source files the
import would execute (:func:`factory_digest`), compared with the digest its ``node.toml`` lists
for that factory. The files are located the way Python's path finder would, without importing
anything (not even a parent package), so a module that changed after the site approved it is
refused with no line of it run.

The digest covers the module and its parent packages' ``__init__.py``; what the module imports
in turn is the site's installed environment, trusted like the rest of it. Only plain ``.py``
sources are covered: a name that resolves to an extension module is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fedmodel.config import FACTORY_PATTERN, ModelConfig
from fedmodel.models.errors import ModelError

# module name -> digest of its sources when load_factory imported it in this process
_IMPORTED: dict[str, str] = {}


def parse_factory(spec: str) -> tuple[str, str]:
    """(module, function) of ``"package.module:function"``; anything else is a one-line error."""
    if not isinstance(spec, str) or not re.fullmatch(FACTORY_PATTERN, spec):
        raise ModelError(f'model factory {spec!r}: expected "package.module:function"')
    module, _, function = spec.partition(":")
    if any(not part for part in module.split(".")):
        raise ModelError(f'model factory {spec!r}: expected "package.module:function"')
    return module, function


def factory_source_files(spec: str) -> list[Path]:
    """The files Python would execute to import the factory's module, parents first."""
    return [path for _, path in _locate(spec)]


def factory_digest(spec: str) -> str:
    """SHA-256 (hex) over the factory's source files: for each, its path relative to the
    ``sys.path`` entry it was found under, a NUL, its length (8 bytes) and its bytes.

    Parent packages are included because importing ``pkg.mod`` first runs ``pkg/__init__.py``:
    an approved ``mod.py`` under a changed ``__init__.py`` is changed code. Relative paths keep
    the digest the same wherever the package is installed, so a coordinator and every site can
    compare it; for a top-level single-file module it is a digest of that one file.
    """
    digest = hashlib.sha256()
    for relative, path in _locate(spec):
        data = path.read_bytes()
        digest.update(relative.encode())
        digest.update(b"\0")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def load_factory(spec: str, expected_sha256: str | None) -> Callable[..., Any]:
    """The factory function, imported only if its sources hash to ``expected_sha256``.

    The digest is read from disk on every call, before the import, so a changed module is
    refused even when an earlier version is already imported in this process (and an approved
    version that differs from the one this process imported is refused too: running the old code
    under the new approval would be neither). ``None`` skips the check: the coordinator's
    choice for its own server, never a node's.
    """
    module_name, function = parse_factory(spec)
    if expected_sha256 is not None:
        actual = factory_digest(spec)
        if actual != expected_sha256.lower():
            raise ModelError(
                f"model factory {spec}: source changed (SHA-256 {actual[:16]}…, approved "
                f"{expected_sha256[:16]}…); not imported"
            )
        earlier = _IMPORTED.get(module_name)
        if module_name in sys.modules and earlier is not None and earlier != actual:
            raise ModelError(
                f"model factory {spec}: this process imported another version of it; restart "
                "to load the approved one"
            )
    module = _import(spec, module_name)
    fn = getattr(module, function, None)
    if fn is None:
        raise ModelError(f"model factory {spec}: module {module_name} has no {function!r}")
    if not callable(fn):
        raise ModelError(f"model factory {spec}: {function!r} is not callable")
    return fn


def build_custom(
    cfg: ModelConfig,
    input_shape: Sequence[int],
    num_classes: int,
    expected_sha256: str | None,
) -> nn.Module:
    """``factory(input_shape, num_classes)``, checked by Opacus before any DP-SGD sees it.

    A module Opacus cannot clip per example (BatchNorm mixes examples in a batch) is refused; with
    ``model.fix_for_dp`` Opacus' ``ModuleValidator.fix`` replaces such layers first (BatchNorm to
    GroupNorm), which the server does too, so every party holds the same architecture.
    """
    from opacus.validators import ModuleValidator

    spec = str(cfg.factory)
    fn = load_factory(spec, expected_sha256)
    try:
        model = fn(tuple(int(d) for d in input_shape), int(num_classes))
    except Exception as err:  # the site's own code: its failure is one line, not a traceback
        raise ModelError(f"model factory {spec}: raised {_one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {spec}: returned {type(model).__name__}, not a torch.nn.Module"
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors and cfg.fix_for_dp:
        model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
    if errors:
        hint = "" if cfg.fix_for_dp else " (model.fix_for_dp = true lets Opacus fix it)"
        raise ModelError(
            f"model factory {spec}: not trainable under DP-SGD: {_one_line(errors[0])}{hint}"
        )
    return model


def _import(spec: str, module_name: str) -> Any:
    """Import the module (after the digest check), and make sure it is the file we hashed."""
    located = _locate(spec)[-1][1]
    importlib.invalidate_caches()  # a package installed since the last import must be seen
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ModelError(f"model factory {spec}: import failed: {_one_line(err)}") from None
    if module_name not in _IMPORTED:
        _IMPORTED[module_name] = factory_digest(spec)
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != located.resolve():
        raise ModelError(f"model factory {spec}: the imported module is not the file checked")
    return module


def _locate(spec: str) -> list[tuple[str, Path]]:
    """(path relative to its sys.path entry, file) for every file the import would execute.

    Mirrors the path finder for plain sources: each name is looked up in the search path of its
    parent (``sys.path`` for the top level), entry by entry; in one entry a package
    (``name/__init__.py``) wins over a module (``name.py``), and a bare directory is a namespace
    package portion used only when no entry has a regular package or module.
    """
    module_name, _ = parse_factory(spec)
    parts = module_name.split(".")
    search = [(Path(entry) if entry else Path.cwd(), Path()) for entry in sys.path]
    files: list[tuple[str, Path]] = []
    for depth, name in enumerate(parts):
        last = depth == len(parts) - 1
        found = _find(name, search)
        if found is None:
            raise ModelError(f"model factory {spec}: module {'.'.join(parts[: depth + 1])} "
                             "not found on this node's Python path")  # fmt: skip
        kind, entries = found
        if kind == "module":
            if not last:
                raise ModelError(f"model factory {spec}: {name} is a module, not a package")
            root, relative = entries[0]
            files.append(((relative / f"{name}.py").as_posix(), root / relative / f"{name}.py"))
            break
        if kind == "package":
            root, relative = entries[0]
            init = relative / name / "__init__.py"
            files.append((init.as_posix(), root / init))
        elif last:
            raise ModelError(f"model factory {spec}: {module_name} is a namespace package")
        search = [(root, relative / name) for root, relative in entries]
    return files


def _find(name: str, search: list[tuple[Path, Path]]) -> tuple[str, list] | None:
    """("package" | "module" | "namespace", [(root, relative dir)]) for ``name``, or None."""
    portions = []
    for root, relative in search:
        folder = root / relative
        if not folder.is_dir():
            continue  # zip files and missing entries: not plain sources, nothing to find
        _refuse_compiled(folder, name)
        if (folder / name / "__init__.py").is_file():
            return "package", [(root, relative)]
        if (folder / f"{name}.py").is_file():
            return "module", [(root, relative)]
        if (folder / name).is_dir():
            portions.append((root, relative))
    return ("namespace", portions) if portions else None


def _refuse_compiled(folder: Path, name: str) -> None:
    """An extension module shadows a source of the same name: Python would load it, unhashed."""
    for base in (folder / name, folder / name / "__init__"):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if Path(f"{base}{suffix}").is_file():
                raise ModelError(f"model factory: {name} is a compiled module, not Python source")


def _one_line(value: object) -> str:
    """The first sentence of the first line (Opacus' errors run on for a paragraph)."""
    text = str(value).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""
    return f"{type(value).__name__}: {first}" if isinstance(value, BaseException) else first
