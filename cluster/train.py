"""The driver: load the config, make the run folder, start the local services, run the job, stop everything.

This is what ``ray job submit`` runs and what ``epiq train`` calls:

    python -m cluster.train --config configs/quickstart.yaml [--set memory.lam=0.3] [--dry-run] [--verbose]

Config errors exit with code 2 before anything heavy (Ray, torch, vLLM) is imported. The terminal shows the
driver's lines, the progress line and errors; the actors' output (vLLM engines, Ray workers) is in the run
folder's Ray logs, or on the terminal too with ``--verbose`` (``run.verbose``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from cluster.config import Config, ConfigError, dump, load

log = logging.getLogger("epiq")


def add_config_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("config_pos", nargs="?", metavar="CONFIG", help="YAML config file")
    parser.add_argument("--config", "-c", help="YAML config file (same as the positional CONFIG)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set memory.lam=0.3 (repeatable)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also stream the actors' output (vLLM engines, Ray workers) to the terminal (run.verbose)")


def config_from_args(args: argparse.Namespace) -> tuple[Config, str]:
    path = getattr(args, "config_pos", None) or args.config
    if not path:
        raise ConfigError("no config file given (e.g. configs/quickstart.yaml)")
    overrides = list(args.set) + (["run.verbose=true"] if getattr(args, "verbose", False) else [])
    return load(path, overrides), path


def make_run_dir(cfg: Config, config_path: str) -> Path:
    """Create (or, with run.resume, reopen) the run folder and save the resolved config in it."""
    name = cfg.run.name or f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.output_dir) / name
    saved = run_dir / "config.yaml"
    if saved.exists() and not cfg.run.resume:
        raise ConfigError(f"run folder {run_dir} already holds a run; set run.resume=true to continue it, or pick another run.name")
    run_dir.mkdir(parents=True, exist_ok=True)
    if saved.exists():
        (run_dir / f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml").write_text(dump(cfg))
    else:
        saved.write_text(dump(cfg))
    return run_dir


def setup_logging(level: str, run_dir: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "driver.log"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font-cache notices are not the driver's lines


def run(cfg: Config, config_path: str) -> int:
    """Run the job described by ``cfg``; returns the process exit code."""
    from cluster.services import LocalServices, ServiceError
    from common.caches import cache_env, redirect_caches

    run_dir = make_run_dir(cfg, config_path)
    setup_logging(cfg.run.log_level, run_dir)
    # the actors need the cache locations too: those this driver sets (not the user's own) go to a joined cluster
    worker_env = {k: v for k, v in cache_env(cfg.run.cache_dir).items() if k not in os.environ}
    redirect_caches(cfg.run.cache_dir)
    log.info("run folder %s", run_dir)
    try:
        with LocalServices(cfg, run_dir, worker_env=worker_env) as services:
            health = services.health()
            log.info("services: %s", health)
            print(f"epiq: services healthy (redis {health['redis_ping_ms']} ms, ray task {health['ray_task_ms']} ms); "
                  f"run folder {run_dir}", flush=True)
            if not cfg.run.verbose and services.ray_started:
                print(f"epiq: engine and worker logs: {run_dir / 'ray'}/session_latest/logs (--verbose shows them here)",
                      flush=True)
            from cluster.job import run_job

            summary = run_job(cfg, run_dir, services.redis_url)
            if "table" in summary:  # run.modes: the comparison
                print(f"\n{summary['table']}\nplot: {summary['plot']}\nsummary: {run_dir / 'summary.json'}", flush=True)
            else:
                print(f"\nepiq: done: Last {summary['last']:.1%}  CSR {summary['csr']:.1%}  "
                      f"(summary in {run_dir / 'summary.json'})", flush=True)
    except (ServiceError, RuntimeError) as e:
        log.error("%s", e)
        print(f"epiq: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not type(e).__module__.startswith("ray."):  # Ray's errors (a dead actor): one line, not a traceback
            raise
        log.exception("the job failed")
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"epiq: error: {type(e).__name__}: {first} (details in {run_dir / 'driver.log'})", file=sys.stderr)
        return 1
    print("epiq: services stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.train", description="Run an epiq job.")
    add_config_args(parser)
    add_run_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg, path = config_from_args(args)
        if args.dry_run:
            print(dump(cfg), end="")
            return 0
        return run(cfg, path)
    except ConfigError as e:
        print(f"epiq: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("epiq: interrupted; services stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
