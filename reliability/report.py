"""The fault suite's results as markdown: ``python3 reliability/report.py [results.json]``.

One summary table (records in, outputs, duplicates, losses, recoveries, time to recover) and
one line of fault figures per scenario; docs/reliability.md embeds its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The figures that say what was injected, per scenario (besides the common ones).
FAULT_FIGURES = {
    "rotation": ("kills", "kills_by_kind", "restarts"),
    "broker_failure": ("killed_node_led", "node_down_s", "rolling_restart", "in_place_restarts",
                       "producer_recreated", "checkpoint_failures", "instance_exits"),
    "network": ("faults", "producer_recreated", "checkpoint_failures", "lost_assignments",
                "instance_exits"),
    "zombie": ("pauses", "paused_s", "lost_assignments", "checkpoint_failures",
               "producer_recreated"),
    "disk_full": ("fill_to_stop_s", "exit_code", "disk_full_lines", "error_lines", "tracebacks"),
    "state_loss": ("state_dirs_deleted", "rebuilt_records"),
    "broker_down": ("unreachable_lines", "alive_while_down", "cluster_up_to_running_s",
                    "error_lines"),
}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def render(results: dict[str, Any]) -> str:
    lines = [f"Run of {results.get('date')} ({'smoke' if results.get('smoke') else 'full'}, "
             f"seed {results.get('seed')}).", "",
             "| scenario | exact | records in | count outputs | windows | late | duplicates | "
             "losses | stores = changelog | recoveries | recover p50 / p99 / max s | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("scenarios", {}).items():
        if "error" in r:
            first = str(r["error"]).splitlines()[0][:200].replace("|", "/")
            lines.append(f"| {name} | **error** | {first} |" + " |" * 9)
            continue
        lines.append(
            f"| {name} | {'yes' if r.get('exact') else '**no**'} | {_cell(r.get('records_in'))} "
            f"| {_cell(r.get('count_outputs'))} | {_cell(r.get('windows_emitted'))} of "
            f"{_cell(r.get('windows_expected'))} | {_cell(r.get('late_records'))} "
            f"| {_cell(r.get('duplicates'))} | {_cell(r.get('losses'))} "
            f"| {r.get('stores_checked', 0) - r.get('stores_mismatched', 0)} of "
            f"{r.get('stores_checked', 0)} | {_cell(r.get('recoveries'))} "
            f"| {_cell(r.get('recover_p50_s'))} / {_cell(r.get('recover_p99_s'))} / "
            f"{_cell(r.get('recover_max_s'))} | {_cell(r.get('seconds'))} |")
    lines.append("")
    for name, r in results.get("scenarios", {}).items():
        figures = ", ".join(f"{k} {_cell(r[k])}" for k in FAULT_FIGURES.get(name, ()) if k in r)
        if figures:
            lines.append(f"- **{name}**: {figures}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else HERE / "results.json"
    sys.stdout.write(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
