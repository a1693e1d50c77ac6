"""Fixtures of the CLI tests: the expert sets live beside the code they exercise (tests/adaptation, tests/serving);
the adaptation set is the default here, tests/cli/test_serve.py imports the serving one."""

from tests.adaptation.conftest import tiny_experts_dir  # noqa: F401
