"""Every command's options come from its config dataclass through one helper (cli.common.add_config_args)."""

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from transformer_squared.adaptation.config import CEMConfig, FewShotConfig, RouterConfig
from transformer_squared.cli.common import add_config_args, config_from_args
from transformer_squared.cli.main import build_parser
from transformer_squared.errors import T2Error
from transformer_squared.evaluation import EvalConfig
from transformer_squared.serving.config import ServeConfig
from transformer_squared.training.config import TrainConfig

# command line, its config, the config's required values, fields the command sets itself, renamed flags
COMMANDS = [
    (["eval", "--task", "gsm8k"], EvalConfig, {"task": "gsm8k"}, {}, {}),
    (["train", "--out", "x"], TrainConfig, {"out": "x"}, {}, {}),
    (["serve", "--experts", "d"], ServeConfig, {}, {}, {}),
    (["adapt", "--experts", "d"], FewShotConfig, {}, {"cem": CEMConfig()}, {}),
    (["adapt", "--experts", "d"], CEMConfig, {}, {}, {}),
    (["adapt", "--experts", "d"], RouterConfig, {}, {}, {"max_tokens": "router-max-tokens"}),
]


@pytest.mark.parametrize("argv, cls, required, own, renamed", COMMANDS,
                         ids=lambda x: getattr(x, "__name__", None))
def test_every_config_field_is_an_option_and_the_defaults_agree(argv, cls, required, own, renamed):
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    flags = {s for a in sub._actions for s in a.option_strings}
    for f in dataclasses.fields(cls):
        if f.name in own or not f.metadata.get("cli", True):
            continue
        assert "--" + renamed.get(f.name, f.name.replace("_", "-")) in flags, f.name
    assert config_from_args(cls, args, **own) == cls(**required, **own)


@dataclass(frozen=True)
class Demo:
    name: str = field(metadata={"help": "who (no default: required)"})
    layer: str | int = field(default="auto", metadata={"help": "an index or auto"})
    rate: float = field(default=0.5, metadata={"help": "a 50% rate"})
    fast: bool = field(default=True, metadata={"help": "go fast"})
    hidden: int = field(default=3, metadata={"cli": False})


def test_types_booleans_required_help_and_hidden_fields():
    p = argparse.ArgumentParser()
    add_config_args(p, Demo)
    args = p.parse_args(["--name", "a", "--layer", "7", "--rate", "0.25", "--no-fast"])
    assert config_from_args(Demo, args) == Demo(name="a", layer=7, rate=0.25, fast=False)
    assert config_from_args(Demo, p.parse_args(["--name", "b"])) == Demo(name="b")
    assert p.parse_args(["--name", "b", "--layer", "auto"]).layer == "auto"
    with pytest.raises(SystemExit):
        p.parse_args([])  # --name is required: the field has no default
    text = p.format_help()
    assert "a 50% rate (default: 0.5)" in text and "who (no default: required)" in text
    assert "--hidden" not in text


def test_a_bad_value_is_the_configs_one_line_error():
    args = build_parser().parse_args(["adapt", "--experts", "d", "--router", "--layer", "middle"])
    with pytest.raises(T2Error, match="router layer must be an integer or 'auto', got 'middle'"):
        config_from_args(RouterConfig, args)
