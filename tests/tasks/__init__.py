"""Tests for transformer_squared.tasks (a package, so its module names cannot collide with tests/*.py)."""
