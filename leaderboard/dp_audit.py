"""The privacy audit's tables in a run folder (``giabench.app.dp_audit`` writes them): read back checked, as text
for the terminal, and as the report's section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from giabench import privacy_audit
from giabench.errors import GiabenchError

SUMMARY_FILE, CHECKS_FILE = "privacy_audit.csv", "privacy_calibration.csv"


def read_summary(folder: Path) -> pd.DataFrame | None:
    """A folder's ``privacy_audit.csv`` (None when absent), its columns checked."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise GiabenchError(f"{path}: not a privacy audit table ({exc})") from None
    missing = [c for c in privacy_audit.SUMMARY_COLUMNS if c not in frame.columns]
    if missing:
        raise GiabenchError(f"{path}: not a privacy audit table (missing column {missing[0]!r})")
    frame["failures"] = frame["failures"].fillna("").astype(str)
    return frame


def terminal(summary: pd.DataFrame) -> str:
    """One line per setting: pass or FAIL, checks passed, the claims and the lower bound with its draws."""
    lines = []
    for _, row in summary.iterrows():
        lower = "not run" if pd.isna(row["epsilon_lower"]) else \
            f"{row['epsilon_lower']:.3g} ({int(row['lower_draws'])} draws per neighbour)"
        lines.append(f"{'pass' if bool(row['passed']) else 'FAIL'}  {row['setting']}\n"
                     f"      {int(row['checks_passed'])}/{int(row['checks'])} checks; epsilon claimed "
                     f"{row['epsilon_claimed']:.4g} by the defense's cost ({row['epsilon_release']:.4g} for its "
                     f"first release alone) at delta {row['delta']:g}, {row['adjacency']}; empirical lower bound "
                     f"{lower}")
        if row["failures"]:
            lines += [f"      {line}" for line in str(row["failures"]).split(" | ")]
    return "\n".join(lines)
