"""Sluice connectors."""
