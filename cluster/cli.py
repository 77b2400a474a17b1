"""The ``epiq`` console script: one sub-command per job, each a thin wrapper over a module's ``main``.

    epiq train configs/quickstart.yaml [--set k=v ...] [--dry-run] [--verbose]   # = python -m cluster.train ...
    epiq config configs/quickstart.yaml [--set k=v ...]              # validate and print the resolved config
    epiq config --reference                                          # every key, type, default and doc (markdown)
    epiq memory stats|top|export|import|snapshot|rollback ...         # see memory_server/cli.py
    epiq bench memory|rollout|learning|lora|adapter_capacity|policy_model|chaos [...]  # see benchmarks/<name>.py
    epiq report RUN_DIR [RUN_DIR ...] [--out DIR]                      # compare runs: intervals, differences, plot

Config errors exit with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from cluster import train
from cluster.config import ConfigError, dump, reference_markdown

BENCHMARKS = ("memory", "rollout", "learning", "lora", "adapter_capacity", "policy_model", "chaos")


def _bench(name: str, argv: list[str]) -> int:
    """Run one benchmark's ``main`` (explicit: no import paths built from strings)."""
    if name == "memory":
        from benchmarks import memory as bench
    elif name == "rollout":
        from benchmarks import rollout as bench
    elif name == "learning":
        from benchmarks import learning as bench
    elif name == "lora":
        from benchmarks import lora as bench
    elif name == "adapter_capacity":
        from benchmarks import adapter_capacity as bench
    elif name == "policy_model":
        from benchmarks import policy_model as bench
    elif name == "chaos":
        from benchmarks import chaos as bench
    else:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
    return bench.main(argv)


def _config(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    cfg, _ = train.config_from_args(args)
    print(dump(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epiq", description="epiq: agents that keep learning after deployment.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run a job (memory and/or LoRA learning) from a config")
    train.add_config_args(p)
    train.add_run_args(p)

    p = sub.add_parser("memory", help="inspect and manage a memory: stats, top, export, import, snapshot, rollback")
    from memory_server.cli import build_parser as memory_parser

    memory_parser(p)

    p = sub.add_parser("bench", help="run a benchmark: " + ", ".join(BENCHMARKS) + " (benchmarks/<name>.py)")
    p.add_argument("benchmark", choices=BENCHMARKS, help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see --help of each)")

    p = sub.add_parser("report", help="compare run folders: intervals over seeds, paired differences, plot")
    p.add_argument("report_args", nargs=argparse.REMAINDER, help="run folders and options (see epiq report -h)")

    p = sub.add_parser("config", help="validate a config and print it resolved")
    train.add_config_args(p)
    p.add_argument("--reference", action="store_true", help="print the reference of every config key (markdown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg, path = train.config_from_args(args)
            if args.dry_run:
                print(dump(cfg), end="")
                return 0
            return train.run(cfg, path)
        if args.command == "config":
            return _config(args)
        if args.command == "bench":
            return _bench(args.benchmark, args.bench_args)
        if args.command == "report":
            from cluster.report import main as report

            return report(args.report_args)
        if args.command == "memory":
            from memory_server.cli import run as run_memory

            return run_memory(args)
    except ConfigError as e:
        print(f"epiq: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("epiq: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
