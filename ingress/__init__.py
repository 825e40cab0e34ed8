"""Sluice ingress."""
