"""Registering SVF as a PEFT method, through PEFT's method tables (one small module, on purpose).

PEFT has no official out-of-tree registration (huggingface/peft#2273, #2634, #2282): `register_peft_method`
insists on a member of its closed `PeftType` enum. Its lookups, though, go through four dicts in `peft.mapping`
keyed by the enum's *str* values, so the plain string "SVF" works as a key everywhere PEFT looks a method up
(get_peft_model, PeftConfig.from_pretrained, PeftModel.from_pretrained, save/load of state dicts). This module
checks that those tables look as they do in the PEFT versions we test, then fills them. On a PEFT whose tables
differ it fails with one line instead of half-working.
"""

from __future__ import annotations

import enum
import warnings

from packaging.version import Version

from ..errors import T2Error

TESTED = ("0.21.2", "0.22")  # the range tested: >= first, < second (pyproject's `trl` extra pins the same)
_TABLES = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")


def register() -> None:
    """Make `SVFConfig` a PEFT method (idempotent). A T2Error if PEFT is missing or its tables differ."""
    try:
        import peft
        import peft.mapping as mapping
        from peft.utils.peft_types import PeftType
    except ImportError:
        raise T2Error("SVF adapters for PEFT need peft: pip install 'transformer-squared[trl]'") from None
    # config.py and model.py import peft at their top: imported after the check, a missing peft is one line
    from .config import PEFT_TYPE, SVFConfig
    from .model import SVFModel

    version = getattr(peft, "__version__", "?")
    tables = [getattr(mapping, t, None) for t in _TABLES]
    if (not all(isinstance(t, dict) for t in tables) or not issubclass(PeftType, str)
            or not issubclass(PeftType, enum.Enum) or "LORA" not in tables[0]):
        raise T2Error(f"peft {version} lays out its method tables differently from the peft {TESTED[0]} this "
                      f"library registers SVF with: pip install 'peft>={TESTED[0]},<{TESTED[1]}'")
    config_map, tuner_map, prefix_map = tables
    if tuner_map.get(PEFT_TYPE) is SVFModel:
        return
    if PEFT_TYPE in config_map or PEFT_TYPE in tuner_map or SVFModel.prefix in prefix_map.values():
        raise T2Error(f"peft {version} already has a method called {PEFT_TYPE!r} or the prefix "
                      f"{SVFModel.prefix!r}; this library cannot register SVF beside it")
    if not Version(TESTED[0]) <= Version(version) < Version(TESTED[1]):
        warnings.warn(f"transformer_squared.peft is tested with peft>={TESTED[0]},<{TESTED[1]}, not {version}",
                      stacklevel=2)
    config_map[PEFT_TYPE] = SVFConfig
    tuner_map[PEFT_TYPE] = SVFModel
    prefix_map[PEFT_TYPE] = SVFModel.prefix
