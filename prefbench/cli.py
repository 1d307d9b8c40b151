"""prefbench's command line: dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def objectives_table() -> str:
    """One block per registered objective: data kind, reference need, version, hyperparameters, paper."""
    from prefbench.objectives import OBJECTIVES

    lines = []
    for name, cls in OBJECTIVES.items():
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.init) or "(none)"
        ref = "reference" if cls.needs_reference else "reference-free"
        lines.append(f"{name:<18} {cls.data:<8} {ref:<14} v{cls.version}  {params}")
        lines.append(f"{'':<18} {cls.paper}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefbench", description="Train and compare LLM alignment objectives.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("objectives", help="list every objective: data kind, reference need, hyperparameters, paper")
    args = parser.parse_args(argv)

    if args.command == "objectives":
        print(objectives_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
