"""Defenses: each turns a protocol into a client that shares a defended update (``giabench.contracts.Client``)."""
