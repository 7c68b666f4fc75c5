"""One module per DAG the demo runs: ``ORDER`` (int) and ``run(ctx: DemoContext) -> dict``.

``run`` triggers the DAG through the real scheduler (``ctx.stack``), answers any human step the way a
service manager would (through the REST API), waits, and returns a short summary of counts and where
the outputs are. ``devtools.demo`` discovers the modules here and runs them in ``ORDER``.
"""
