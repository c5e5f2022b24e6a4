"""Defenses: each turns a protocol into a client that shares a defended update (see ``base.Client``)."""

from giabench.defenses.base import Client

__all__ = ["Client"]
