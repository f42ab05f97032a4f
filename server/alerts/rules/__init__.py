"""The rules, one module each: a pure ``_judge(ctx) -> findings`` and its ``RULE`` metadata.

They are registered in one table, ``trainvitals.server.alerts.registry.RULES``.
"""
