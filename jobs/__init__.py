"""Thin entry points, one per stage: arguments, config, session, one call."""
