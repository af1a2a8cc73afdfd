"""The fault suite: ``python3 reliability/run.py [--smoke] [--scenarios a,b] [--out FILE]``.

Starts a 3-node local cluster (``streamproc kafka start --brokers 3``'s code, in a temp dir)
unless ``--brokers`` names one, runs each scenario on its own application, and prints and
writes its figures. Exit 0 only if every scenario was exact. The full run takes tens of
minutes; ``--smoke`` runs every scenario small (CI). docs/reliability.md explains the results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reliability.harness import kill_all  # noqa: E402
from reliability.scenario import Context  # noqa: E402

SCENARIOS = ("rotation", "broker_failure", "network", "zombie", "disk_full", "state_loss",
             "broker_down", "rescale")


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="every scenario, small")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, of {', '.join(SCENARIOS)}")
    ap.add_argument("--brokers", default=None,
                    help="an existing cluster (scenarios that kill brokers need ours)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default reliability/results[-smoke].json)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    ap.add_argument("--update", action="store_true",
                    help="replace only the scenarios run in an existing results file")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    seed = args.seed if args.seed is not None else int(time.time())
    # A SIGTERM (a CI timeout) still stops the cluster and the instances: the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out_path = args.out or HERE / ("results-smoke.json" if args.smoke else "results.json")

    os.environ.setdefault("STREAMPROC_LOG_LEVEL", "warning")
    from streamproc.kafka import cluster
    from streamproc.logs import configure
    configure("warning", "console")

    work = Path(tempfile.mkdtemp(prefix="streamproc-reliability-"))
    cluster_dir: Path | None = None
    if args.brokers:
        bootstrap = args.brokers
    else:
        cluster_dir = work / "cluster"
        t0 = time.monotonic()
        bootstrap = cluster.start(cluster_dir, brokers=3).bootstrap
        log(f"cluster of 3 nodes at {bootstrap} in {time.monotonic() - t0:.0f} s")
    log(f"work dir {work}; seed {seed}; {'smoke' if args.smoke else 'full'} run")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results: dict[str, Any] = {"date": now, "smoke": args.smoke, "seed": seed, "scenarios": {}}
    if args.update and out_path.exists():
        results = json.loads(out_path.read_text())
        results["updated"] = now
    failed: list[str] = []
    try:
        for name in chosen:
            mod = importlib.import_module(f"reliability.scenarios.{name}")
            ctx = Context(bootstrap, cluster_dir, work, args.smoke, seed, log)
            log(f"== {name}: {mod.TITLE}")
            t0 = time.monotonic()
            try:
                res = mod.run(ctx)
            except Exception as exc:
                res = {"exact": False, "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-4000:]}
                kill_all()  # its instances must not load the next scenario
            res.setdefault("seconds", round(time.monotonic() - t0, 1))
            res["run"] = {"date": now, "seed": seed}
            results["scenarios"][name] = res
            if not res.get("exact"):
                failed.append(name)
            log(f"   {name}: {'EXACT' if res.get('exact') else 'FAILED'} "
                + json.dumps({k: v for k, v in res.items() if k != "traceback"}, default=str))
    finally:
        kill_all()  # what a failed scenario left running
        if cluster_dir is not None:
            cluster.stop(cluster_dir)
        out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {out_path}")
        if failed or args.keep:
            log(f"logs and state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        log(f"NOT exact: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
