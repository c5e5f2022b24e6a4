"""The record of a tuning run (``giabench tune``): per setting, the attack's default and tuned parameters.

A *setting* is a cell without its seed (``Cell.setting`` names it by a hash of that config). The record is ``RECORD``
(JSON) in the tuning run's folder. ``load`` validates one from a file that may come from anywhere: a mapping whose
``settings`` list holds, per setting, its ``key`` and, where it was tuned, its ``tuned`` parameters (names to numbers,
strings or booleans); the rest is for people and the report. A suite asks for a tuning run's parameters with
``tuned: FOLDER`` (``giabench.suite``).
"""

from __future__ import annotations

import json
from pathlib import Path

from giabench.errors import ConfigError

RECORD = "tuned.json"
FORMAT = 1


def record_path(path: str | Path) -> Path:
    """A tuning run's record: ``path`` itself when it is a file, else ``path/RECORD``."""
    path = Path(path)
    return path if path.is_file() else path / RECORD


def load(path: str | Path) -> dict:
    """The validated record at ``path`` (a tuning run folder or its record file)."""
    file = record_path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the tuning record ({exc.strerror}); is it a giabench tune folder?",
                          field="tuned") from None
    except ValueError as exc:
        raise ConfigError(f"{file}: not JSON ({exc})", field="tuned") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("settings"), list):
        raise ConfigError(f"{file}: not a tuning record of format {FORMAT} (a mapping with a settings list)",
                          field="tuned")
    for i, setting in enumerate(doc["settings"]):
        where = f"{file}: settings[{i}]"
        if not isinstance(setting, dict) or not isinstance(setting.get("key"), str):
            raise ConfigError(f"{where}: each setting needs a key (a string)", field="tuned")
        tuned = setting.get("tuned", {})
        if not isinstance(tuned, dict) or not all(
                isinstance(k, str) and isinstance(v, int | float | str | bool) for k, v in tuned.items()):
            raise ConfigError(f"{where}: tuned must map parameter names to numbers, strings or booleans",
                              field="tuned")
    return doc


def tuned_params(doc: dict) -> dict[str, dict]:
    """Setting key -> the tuned attack parameters, for every setting of a record."""
    return {setting["key"]: setting["tuned"] for setting in doc["settings"] if setting.get("tuned")}
