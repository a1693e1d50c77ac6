"""Tests for transformer_squared.training (a package, so its module names cannot collide with tests/*.py)."""
