"""Asynchronize-Django benchmark harness."""
