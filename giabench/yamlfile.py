"""YAML files read safely: ``yaml.SafeLoader`` types only, duplicate keys refused, and every mapping remembering the
line of each key, so that errors name the line of the offending value."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from giabench.errors import ConfigError


class Located(dict):
    """A mapping that remembers the line of each key."""

    lines: dict


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records line numbers of mapping keys (safe: no arbitrary objects)."""


def _construct_mapping(loader, node):
    seen: dict = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r} (first on line {seen[key_node.value]})",
                    key_node.start_mark)
            seen[key_node.value] = key_node.start_mark.line + 1
    mapping = Located(loader.construct_mapping(node, deep=True))
    mapping.lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    mapping.lines["__self__"] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """YAML with safe types only, duplicate keys refused and mapping keys' lines kept; errors name the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader subclasses yaml.SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None


def packaged(folder: str) -> dict:
    """The YAML files giabench ships in ``giabench/<folder>`` (``suites``, ``suites/utility``), by name."""
    root = resources.files("giabench").joinpath(*folder.split("/"))
    return {p.name[:-5]: p for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")}


def read_spec(spec: str, folder: str, what: str) -> tuple[str, str]:
    """The text and source name of a YAML file given by the name of one shipped in ``folder`` or by its path (a name
    wins over a folder of the same name in the working directory)."""
    known = packaged(folder)
    path = Path(spec)
    if spec not in known and (path.suffix in (".yaml", ".yml") or path.exists()):
        return read_text(path, what), str(path)
    if spec not in known:
        raise ConfigError(f"unknown {what.removesuffix(' file')} {spec!r}; packaged: {', '.join(known)} (or give a "
                          ".yaml path)")
    return known[spec].read_text(encoding="utf-8"), spec


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; a directory, a missing, binary or unreadable file is a ConfigError naming
    ``what`` (e.g. 'suite file') and the path."""
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
