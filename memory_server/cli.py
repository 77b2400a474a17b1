"""``epiq memory``: inspect and manage a memory namespace, live in Redis or saved in a snapshot file.

    epiq memory stats    --url redis://:PW@127.0.0.1:PORT/0 --namespace NS   # counts per kind, Q histogram
    epiq memory stats    --file mem.msgpack                                   # the same, from a snapshot
    epiq memory top      --url ... --namespace NS [-n 10] [--by q|visits]     # best memories
    epiq memory export   --url ... --namespace NS --out mem.jsonl             # JSON lines (readable; embeddings opt-in)
    epiq memory import   --url ... --namespace NS --in mem.jsonl [--shards 1] # add exported records (needs embeddings)
    epiq memory snapshot --url ... --namespace NS --out mem.msgpack           # exact state, for rollback
    epiq memory rollback --url ... --namespace NS --in mem.msgpack            # replace the namespace by a snapshot

``--url`` defaults to ``$EPIQ_REDIS_URL``. Roll back with writers paused (stop the run first); shard actors
rebuild from Redis when they start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from common.redis_conn import connect
from memory_server import keys
from memory_server.records import MemoryRecord, Provenance, WireError


class MemoryCliError(RuntimeError):
    """Wrong or missing arguments / sources; printed as one line, exit code 2."""


def _store(args: argparse.Namespace):
    from memory_server.store import MemoryStore

    url = args.url or os.environ.get("EPIQ_REDIS_URL")
    if not url:
        raise MemoryCliError("no memory to read: pass --url redis://... (or set EPIQ_REDIS_URL), or --file SNAPSHOT")
    client = connect(url)
    shards = args.shards or int(client.hget(keys.meta_key(args.namespace), "shards") or 1)
    return MemoryStore(client, args.namespace, shards)


def _records(args: argparse.Namespace) -> list[MemoryRecord]:
    if getattr(args, "file", None):
        from memory_server.store import read_snapshot

        return read_snapshot(args.file)[1]
    store = _store(args)
    ids = [x.decode() for x in store.client.zrange(keys.namespace_index_key(args.namespace), 0, -1)]
    return [r for r in store.get(ids) if r is not None]


def histogram(values: list[float], bins: int = 10, lo: float = -1.0, hi: float = 1.0, width: int = 40) -> list[str]:
    """Text histogram lines of ``values`` over [lo, hi] (values outside are clipped into the end bins)."""
    if not values:
        return ["(no memories)"]
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    return [f"[{edges[i]:+.2f}, {edges[i + 1]:+.2f}) {int(c):7d} {'#' * round(width * c / top)}" for i, c in enumerate(counts)]


def cmd_stats(args: argparse.Namespace) -> None:
    """counts per kind, Q summary and a Q histogram"""
    recs = _records(args)
    kinds = Counter(r.kind for r in recs)
    qs = [r.q for r in recs]
    print(f"memories: {len(recs)}   " + "   ".join(f"{k}: {kinds.get(k, 0)}" for k in ("success", "failure")))
    if recs:
        visits = np.array([r.visits for r in recs])
        print(f"Q: mean {np.mean(qs):+.3f}  min {min(qs):+.3f}  max {max(qs):+.3f}   "
              f"visits: total {int(visits.sum())}  never visited {int((visits == 0).sum())}")
        for kind in ("success", "failure"):
            kq = [r.q for r in recs if r.kind == kind]
            if kq:
                print(f"  {kind:8s} Q mean {np.mean(kq):+.3f} over {len(kq)}")
    print("Q histogram:")
    for line in histogram(qs):
        print("  " + line)


def cmd_top(args: argparse.Namespace) -> None:
    """the best memories by Q (or visits)"""
    recs = sorted(_records(args), key=lambda r: (getattr(r, args.by), r.visits), reverse=True)[: args.n]
    for r in recs:
        print(f"{r.id[:12]}  Q {r.q:+.3f}  visits {r.visits:4d}  {r.kind:7s}  {r.intent[:60]!r} -> {r.experience[:60]!r}")


def to_json(r: MemoryRecord, with_embedding: bool) -> dict:
    p = r.provenance
    out = {"id": r.id, "namespace": r.namespace, "intent": r.intent, "experience": r.experience, "kind": r.kind,
           "q": r.q, "visits": r.visits, "last_reward": r.last_reward, "created_at": r.created_at,
           "updated_at": r.updated_at, "provenance": vars(p).copy()}
    if with_embedding:
        out["embedding"] = [float(x) for x in r.embedding]
    return out


def from_json(d: dict, namespace: str) -> MemoryRecord:
    if "embedding" not in d:
        raise MemoryCliError(f"record {d.get('id')}: no embedding (export with --with-embeddings to re-import)")
    return MemoryRecord(namespace=namespace, intent=d["intent"], embedding=np.asarray(d["embedding"], dtype=np.float32),
                        experience=d["experience"], kind=d["kind"], provenance=Provenance(**d["provenance"]), id=d["id"],
                        q=float(d["q"]), visits=int(d["visits"]), last_reward=d.get("last_reward"),
                        created_at=float(d["created_at"]), updated_at=d.get("updated_at"))


def read_records(path: Path, namespace: str) -> list[MemoryRecord]:
    """The records of an exported JSON lines file; a line that is not a valid record is a ``MemoryCliError`` naming
    the file and line (nothing is imported from a file with one bad line)."""
    recs = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise MemoryCliError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            recs.append(from_json(d, namespace))
        except MemoryCliError as e:
            raise MemoryCliError(f"{path}:{number}: {e}") from None
        except (ValueError, KeyError, TypeError) as e:  # bad JSON, a missing field, a wrong type or value
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise MemoryCliError(f"{path}:{number}: not a memory record: {what}") from None
    return recs


def cmd_export(args: argparse.Namespace) -> None:
    """write the memories as JSON lines"""
    recs = _records(args)
    with open(args.out, "w") as f:
        for r in recs:
            f.write(json.dumps(to_json(r, args.with_embeddings)) + "\n")
    print(f"exported {len(recs)} memories to {args.out}")


def cmd_import(args: argparse.Namespace) -> None:
    """add memories from an exported JSON lines file"""
    recs = read_records(args.input, args.namespace)  # the whole file is checked before anything is written
    added = _store(args).add(recs)
    print(f"imported {len(added)} of {len(recs)} memories into {args.namespace} ({len(recs) - len(added)} already present)")


def cmd_snapshot(args: argparse.Namespace) -> None:
    """save the exact state of a namespace to a file"""
    n = _store(args).snapshot(args.out)
    print(f"snapshot of {n} memories written to {args.out}")


def cmd_rollback(args: argparse.Namespace) -> None:
    """replace a namespace by a snapshot"""
    n = _store(args).restore(args.input)
    print(f"namespace {args.namespace} rolled back to {args.input} ({n} memories); restart shard actors to reload")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="epiq memory", description="Inspect and manage a memory namespace.")
    sub = parser.add_subparsers(dest="memory_command", required=True)

    def common(p: argparse.ArgumentParser, file_ok: bool) -> None:
        p.add_argument("--url", help="redis:// URL of the memory's server (default $EPIQ_REDIS_URL)")
        p.add_argument("--namespace", default="default", help="memory namespace (memory.namespace of the run)")
        p.add_argument("--shards", type=int, default=0, help="shard count (default: as stored)")
        if file_ok:
            p.add_argument("--file", type=Path, help="read a snapshot file instead of a live server")

    for name, fn, file_ok in (("stats", cmd_stats, True), ("top", cmd_top, True), ("export", cmd_export, True),
                              ("import", cmd_import, False), ("snapshot", cmd_snapshot, False), ("rollback", cmd_rollback, False)):
        p = sub.add_parser(name, help=fn.__doc__ or name)
        common(p, file_ok)
        p.set_defaults(fn=fn)
        if name == "top":
            p.add_argument("-k", dest="n", type=int, default=10, help="how many")
            p.add_argument("--by", choices=("q", "visits"), default="q")
        if name in ("export", "snapshot"):
            p.add_argument("--out", required=True, type=Path)
        if name == "export":
            p.add_argument("--with-embeddings", action="store_true", help="include embeddings (needed to re-import)")
        if name in ("import", "rollback"):
            p.add_argument("--in", dest="input", required=True, type=Path)
    return parser


def run(args: argparse.Namespace) -> int:
    import redis

    try:
        args.fn(args)
        return 0
    except (MemoryCliError, WireError, FileNotFoundError, ValueError) as e:
        print(f"epiq memory: error: {e}", file=sys.stderr)
        return 2
    except redis.RedisError as e:
        print(f"epiq memory: redis error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
