"""Benchmarks: each module measures and prints, none asserts. ``python -m bench`` runs them all."""
