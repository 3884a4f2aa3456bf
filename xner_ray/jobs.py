"""The shared command line of the Ray job entry points in ``jobs/``.

    python jobs/NAME.py --config FILE [--set key=value ...] [--dry-run] [--address ADDR]

A job parses its typed config (unknown keys and bad values fail before any work starts),
optionally prints it resolved, connects to Ray once and calls one library function.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Optional, Sequence


def _override(values: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string
    target = values
    *path, last = key.split(".")
    for part in path:
        target = target.setdefault(part, {})
    target[last] = value


def run_job(name: str, cls: type, fn: Callable[[Any], Any],
            argv: Optional[Sequence[str]] = None, doc: str = "") -> int:
    from xner_ray import config
    from xner_ray.cluster import init_ray

    p = argparse.ArgumentParser(prog=f"jobs/{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML or JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (JSON value; dots for nested keys)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        values = config.load_file(args.config)
        for item in args.set:
            _override(values, item)
        cfg = config.build(cls, values)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{name}: bad config: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config.dump(cfg))
        return 0
    init_ray(args.address)
    result = fn(cfg)
    print(json.dumps({"job": name, "result": result}, default=str))
    return 0
