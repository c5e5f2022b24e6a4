"""The front-end above everything: the ``giabench`` command line (``cli``), the commands behind it (``commands``,
``audit`` and its report, ``describe``) and the integrations with FL stacks (``integrations``). It drives the core,
the attacks, the defenses and the leaderboard; nothing below imports it (``tests/test_layers.py``)."""
