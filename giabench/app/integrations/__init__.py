"""Optional integrations with the FL stacks practitioners run (``giabench[flower]``)."""
