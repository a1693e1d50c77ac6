"""SVF as a PEFT adapter type: `peft.get_peft_model(model, SVFConfig(...))`, trainable from TRL.

Importing this package registers the method with PEFT (see `register.py`):

    import transformer_squared.peft as t2peft
    model = peft.get_peft_model(model, t2peft.SVFConfig(targets="mlp"))     # z = 1: the base model
    model.save_pretrained("adapter"); peft.PeftModel.from_pretrained(base, "adapter")
    t2peft.peft_to_expert("adapter", "expert")                              # a t2 expert (and back)

Files: config.py (SVFConfig), layer.py (SVFLayer: the PEFT contract around svf.py's math), model.py (SVFModel:
targets, SVD, fingerprint, mixing), register.py (PEFT's method tables), convert.py (expert <-> adapter).
"""

from .register import register

register()

from .config import SVFConfig  # noqa: E402
from .convert import expert_to_peft, peft_to_expert  # noqa: E402
from .layer import SVFLayer  # noqa: E402
from .model import SVFModel  # noqa: E402

__all__ = ["SVFConfig", "SVFLayer", "SVFModel", "expert_to_peft", "peft_to_expert", "register"]
