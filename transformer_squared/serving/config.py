"""ServeConfig: where the server listens, how it batches, and the limits it enforces on requests."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import T2Error
from ..evaluation import PRECISION_HELP, PRECISIONS


@dataclass(frozen=True)
class ServeConfig:
    """Server settings. Validated on construction; a bad value raises `T2Error`."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on (default: loopback only)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)"})
    max_batch_size: int = field(default=16, metadata={"help": "most requests decoded together in one batch"})
    batch_wait_ms: float = field(default=10.0, metadata={"help": "after a request arrives, wait this long for more "
                                                                  "to batch with it"})
    max_queue: int = field(default=64, metadata={"help": "requests admitted at once (queued + generating); more "
                                                          "get 429"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "longest prompt accepted, in tokens"})
    max_tokens: int = field(default=512, metadata={"help": "largest max_tokens a request may ask for"})
    default_max_tokens: int | None = field(default=None, metadata={"help": "max_tokens of a request that gives "
                                                                         "none (None: min(256, max_tokens))"})
    drain_timeout: float = field(default=30.0, metadata={"help": "on SIGINT/SIGTERM, seconds to let admitted "
                                                                  "requests finish before cancelling them"})
    merge_uniform: bool = field(default=True, metadata={"help": "a batch whose rows all use one expert runs on "
                                                                 "merged W' (full speed) instead of per-row z"})
    mix_experts: bool = field(default=True, metadata={
        "help": "requests for different experts decode in one batch (per-row z: none waits for another expert); "
                "--no-mix-experts: a batch runs one expert at a time on merged W' (per-row z costs ~1.5-1.9x a "
                "merged step and prefill on CPUs): it starts with the oldest waiting request's expert and takes "
                "that expert's queued requests; the others wait for it to drain"})
    precision: str = field(default="exact", metadata={"help": PRECISION_HELP, "choices": PRECISIONS})
    api_key: str | None = field(default=None, repr=False, metadata={
        "help": "when set, every /v1 request needs the header `Authorization: Bearer <key>` (what the openai "
                "client's api_key sends), as vLLM's --api-key; /health stays open; default $T2_API_KEY"})

    def __post_init__(self):
        if self.default_max_tokens is None and isinstance(self.max_tokens, int):
            object.__setattr__(self, "default_max_tokens", min(256, self.max_tokens))
        positive = ("max_batch_size", "max_queue", "max_prompt_tokens", "max_tokens", "default_max_tokens")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise T2Error(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise T2Error(f"port must be in 0..65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise T2Error(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.drain_timeout < 0:
            raise T2Error(f"drain_timeout must be >= 0, got {self.drain_timeout}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()
                                         or not self.api_key.isprintable() or not self.api_key.isascii()):
            raise T2Error("the API key must be a non-empty string of printable ASCII characters (an HTTP header "
                          "carries it)")
        if self.precision not in PRECISIONS:
            raise T2Error(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.default_max_tokens > self.max_tokens:
            raise T2Error(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")

    def to_json(self) -> dict:
        """The settings as JSON, the API key masked (this goes to logs and reports)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_key"] = None if self.api_key is None else "***"
        return out
