"""transformer-squared: Transformer² (self-adaptive LLMs) for any Hugging Face causal LM."""

from ._version import __version__
from .errors import T2Error

__all__ = ["__version__", "T2Error"]
