"""Example user models (not part of the giabench package)."""
