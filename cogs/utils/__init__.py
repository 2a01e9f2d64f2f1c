"""Helpers shared by cogs: translating Discord objects into the core's plain types."""
