"""A third-party giabench plugin, as a user would write one: it registers through giabench's entry points only
(``giabench_toy-0.1.dist-info/entry_points.txt``) and touches nothing in the giabench repository."""
