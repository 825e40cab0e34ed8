"""Sluice broker."""
