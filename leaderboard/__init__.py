"""Leaderboard: tables from a run's store, the HTML report and the regression gate."""
