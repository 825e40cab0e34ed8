"""Sluice SDK: durable handlers in Python."""
