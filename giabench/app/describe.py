"""``giabench list`` and ``giabench describe``: the registered components, each with its parameters, their defaults,
ranges and one line of documentation (``Attack.parameters``, ``Client.parameters``; a component that declares none,
such as a third party's, shows its defaults and types)."""

from __future__ import annotations

import inspect

from giabench import suite, threats, utility_config
from giabench.errors import GiabenchError
from giabench.registry import KINDS, registry


def summary(doc: str, width: int = 150) -> str:
    """The first paragraph of a docstring on one line, shortened to ``width`` characters."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) <= width else paragraph[: width - 3].rstrip() + "..."


def parameter_rows(kind: str, name: str) -> list[tuple[str, str, str, str]]:
    """(parameter, default, range, doc) for every keyword parameter of component ``name`` of ``kind``."""
    reg = registry(kind)
    declared = getattr(reg.get(name), "parameters", {})
    declared = declared if isinstance(declared, dict) else {}  # a model class's ``parameters`` is nn.Module's method
    rows = []
    for key, default in reg.defaults(name).items():
        shown = "(required)" if default is inspect.Parameter.empty else repr(default)
        param = declared.get(key)
        rows.append((key, shown, param.rule if param else "", param.doc if param else "(undocumented)"))
    return rows


def parameter_table(rows: list[tuple[str, str, str, str]], indent: str = "  ") -> str:
    if not rows:
        return f"{indent}parameters: none"
    header = ("parameter", "default", "range", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [header, *rows]
    return "\n".join((indent + "  ".join(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True))
                      + "  " + line[3]).rstrip() for line in lines)


def attack_meta(name: str) -> str:
    """An attack's family, the data it reconstructs, default threat model and assumptions."""
    obj = registry("attacks").get(name)
    needs = obj(**registry("attacks").defaults(name)).requirements("fedsgd")
    return (f"{obj.family}; {' and '.join(obj.modalities)}; threat model {threats.minimal(needs)} by default; "
            f"assumes {obj.assumes or 'nothing stated'}")


def heading(kind: str, name: str) -> str:
    return f"{name} ({kind[:-1]}; {attack_meta(name)})" if kind == "attacks" else f"{name} ({kind[:-1]})"


def list_components(kind: str, verbose: bool = False) -> int:
    """``giabench list``: the registered components of ``kind`` (or the packaged suites); ``verbose``: each with its
    parameter table."""
    if kind == "suites":
        for name in suite.packaged_suites():
            print(f"{name:16s} {suite.load(name).description}")
        print("\nutility configs (giabench utility NAME):")
        for name in utility_config.packaged_configs():
            print(f"{name:16s} {utility_config.description(name)}")
        return 0
    reg = registry(kind)
    for name in reg.names():
        doc = summary(reg.get(name).__doc__ or "")
        if verbose:
            print(f"{heading(kind, name)}\n  {doc}\n{parameter_table(parameter_rows(kind, name))}\n")
            continue
        meta = attack_meta(name) if kind == "attacks" else ""
        params = ", ".join(f"{k}={v}" for k, v, _, _ in parameter_rows(kind, name))
        print(f"{name:16s} {f'[{meta}] ' if meta else ''}{doc}\n{'':16s} parameters: {params or 'none'}")
    return 0


def describe(name: str) -> int:
    """``giabench describe``: every registered component called ``name``, with its whole docstring and its
    parameter table."""
    found = [kind for kind in KINDS if name in registry(kind).names()]
    if not found:
        raise GiabenchError(f"no component called {name!r}; giabench list attacks (defenses, models, datasets, "
                            "protocols) names them")
    for kind in found:
        obj = registry(kind).get(name)
        doc = inspect.cleandoc(obj.__doc__ or "")
        print(f"{heading(kind, name)}\n\n{doc}\n(the paper and the equations: the docstring of {obj.__module__})\n\n"
              f"{parameter_table(parameter_rows(kind, name), indent='')}\n{sweeps(kind, obj)}")
    return 0


def sweeps(kind: str, obj) -> str:
    """What ``giabench tune`` searches of an attack, or the strength axis ``sweep: true`` follows for a defense."""
    if kind == "attacks":
        space = obj.search_space((3, 32, 32))
        return ("searched by giabench tune: " + ", ".join(f"{k} in {d.describe()}" for k, d in space.items()) + "\n"
                if space else "")
    axis = getattr(obj, "strength", None) if kind == "defenses" else None
    return f"strength axis (sweep: true), weakest first: {'; '.join(axis.label(p) for p in axis.points)}\n" \
        if axis else ""
