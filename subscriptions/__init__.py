"""Sluice subscriptions."""
