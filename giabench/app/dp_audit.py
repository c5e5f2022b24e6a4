"""``giabench dp-audit`` and the privacy audit of a run: every DP defense setting of a suite audited
(``giabench.privacy_audit``: release count, sensitivity, calibration of the noise, empirical epsilon lower bound), the
results in ``privacy_audit.csv`` (one row per setting) and ``privacy_calibration.csv`` (one row per check) of the run
folder (``giabench.leaderboard.dp_audit`` reads them for the report). A folder's audit is reused while its settings
and draws are unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from giabench import numerics, privacy_audit, runner
from giabench.leaderboard import dp_audit as audit_tables

DRAWS, LOWER_DRAWS = 200, 1000  # per setting: messages for the calibration, and per neighbour for the lower bound


def audit_into(cells: list, out: Path, env: runner.Environment, draws: int = DRAWS, lower_draws: int = LOWER_DRAWS,
               quiet: bool = False) -> pd.DataFrame | None:
    """Audit the DP settings among ``cells`` into ``out`` (None when there are none); each failure is printed."""
    chosen = privacy_audit.dp_cells(cells, env)
    if not chosen:
        return None
    settings = [privacy_audit.setting_label(c) for c in chosen]
    kept = audit_tables.read_summary(out)
    if kept is not None and list(kept["setting"]) == settings and (kept["draws"] == draws).all() \
            and (kept["lower_draws"] == lower_draws).all():
        return kept
    audits = []
    with numerics.pinned(env.device, env.threads, env.dtype):
        for cell in chosen:
            if not quiet:
                print(f"giabench: privacy audit of {privacy_audit.setting_label(cell)}", file=sys.stderr)
            audits.append(privacy_audit.audit_cell(cell, env, draws, lower_draws))
    summary = pd.DataFrame(privacy_audit.summary_rows(audits), columns=privacy_audit.SUMMARY_COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / audit_tables.SUMMARY_FILE, index=False, float_format="%.6g")
    pd.DataFrame(privacy_audit.check_rows(audits), columns=privacy_audit.CHECK_COLUMNS).to_csv(
        out / audit_tables.CHECKS_FILE, index=False, float_format="%.6g")
    for audit in audits:
        for line in audit.failures:
            print(f"giabench: privacy audit FAILED: {line}", file=sys.stderr)
    return summary
