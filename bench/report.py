"""Turn ``bench/results.json`` into ``docs/benchmarks.md`` and the chart ``docs/benchmarks.png``.

    python bench/report.py [--results bench/results.json] [--md docs/benchmarks.md]
                           [--png docs/benchmarks.png]

As a module: ``render(results, md_path, png_path)`` writes both files; it uses
``render_markdown(results, png_name)`` (the generated markdown block) and
``render_chart(results, png_path)`` (the grouped throughput bar chart).

The generated markdown goes between ``<!-- generated:start -->`` and ``<!-- generated:end -->``.
If the markdown file already has both markers, only that part is replaced and every hand-written
line outside them is kept (the fairness review lives there). A new file gets the markers and a
placeholder "## Fairness review" section; an existing file without markers gets the generated
block put in front of its unchanged content.

Everything shown comes from the JSON. Missing workloads, contenders or guarantees are left out;
empty entries (``{}``) count as missing; ``null`` figures render as "—" (or "failed" for a
missing median); runs or entries with ``ok: false`` are marked ✗ and their problems are listed
under the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- generated:start -->"
END = "<!-- generated:end -->"
PLACEHOLDER = (
    "\n\n## Fairness review\n\n"
    "_To be written by hand: how the Quix Streams and ceiling contenders were implemented, and "
    "why the comparison is fair. This section is outside the generated markers and is kept "
    "when the report is regenerated._\n"
)

CONTENDER_ORDER = ("streamproc", "quix", "ceiling")
CONTENDER_LABELS = {
    "streamproc": "streamproc",
    "quix": "Quix Streams",
    "ceiling": "ceiling (bare confluent-kafka)",
}
GUARANTEE_ORDER = ("eos", "alo")
GUARANTEE_LABELS = {"eos": "exactly-once", "alo": "at-least-once"}
COLOURS = {"streamproc": "#1f77b4", "quix": "#ff7f0e", "ceiling": "#7f7f7f"}
EXTRA_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
VERSION_LABELS = {
    "python": "Python",
    "streamproc": "streamproc",
    "quixstreams": "Quix Streams",
    "confluent_kafka": "confluent-kafka",
    "librdkafka": "librdkafka",
    "quix_confluent_kafka": "confluent-kafka in Quix's venv",
    "kafka_broker": "Kafka broker",
}
DASH = "—"

Results = dict[str, Any]
Entry = dict[str, Any]


# -- small formatting helpers ------------------------------------------------------------------
def _is_num(value: Any) -> TypeGuard[int | float]:
    """True for a real number (not null, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators, or a dash for null / non-numbers."""
    if not _is_num(value):
        return DASH
    return f"{value:,.{digits}f}"


def _k(value: float) -> str:
    """A compact rate: 850, 6.1k, 61k, 1.25M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def _ratio(value: Any) -> str:
    """A ratio as ``2.40x``, or a dash."""
    return f"{value:.2f}x" if _is_num(value) else DASH


def _ok_mark(entry: Entry) -> str:
    """✗ if the entry or any of its runs failed, ✓ if it says ok, blank if it does not say."""
    runs = [r for r in entry.get("runs") or [] if isinstance(r, dict)]
    if entry.get("ok") is False or any(r.get("ok") is False for r in runs):
        return "✗"
    return "✓" if entry.get("ok") is True or runs else ""


def _cell(text: Any) -> str:
    """Make text safe for a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """A markdown table: the first ``left`` columns left-aligned, the rest right-aligned."""
    align = [":--"] * left + ["--:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _date(results: Results) -> str:
    """The run's date as ``2026-11-21 03:00 UTC`` (or the raw string if it does not parse)."""
    raw = str(results.get("date") or "unknown date")
    try:
        return datetime.fromisoformat(raw).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return raw


# -- walking the results -----------------------------------------------------------------------
def _ordered(keys: Any, order: tuple[str, ...]) -> list[str]:
    """Known keys in their canonical order, then any others alphabetically."""
    keys = list(keys)
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def _workload_names(results: Results) -> list[str]:
    """Workload names in natural order (W2 before W10)."""
    def natural(name: str) -> list[Any]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return sorted((results.get("workloads") or {}).keys(), key=natural)


def _entries(workload: dict[str, Any]) -> Iterator[tuple[str, str, Entry]]:
    """(contender, guarantee, entry) for every non-empty entry, in canonical order."""
    per_contender = workload.get("results") or {}
    for contender in _ordered(per_contender, CONTENDER_ORDER):
        per_guarantee = per_contender.get(contender) or {}
        for guarantee in _ordered(per_guarantee, GUARANTEE_ORDER):
            entry = per_guarantee.get(guarantee)
            if isinstance(entry, dict) and entry:
                yield contender, guarantee, entry


def _kind(workload: Any) -> str:
    """throughput, latency, recovery or other: from the entries' fields, else the workload's."""
    if not isinstance(workload, dict):
        return "other"
    fields = {key for _, _, entry in _entries(workload) for key in entry}
    if "median_rps" in fields:
        return "throughput"
    if fields & {"p50_ms", "p99_ms", "p999_ms"}:
        return "latency"
    if fields & {"restore_s", "restore_rps", "kill_to_first_output_s"}:
        return "recovery"
    if "input_records" in workload:
        return "throughput"
    return "latency" if "rate_rps" in workload else "other"


def _label(contender: str, guarantee: str) -> list[str]:
    """Display names for a table row's first two cells."""
    return [CONTENDER_LABELS.get(contender, contender), GUARANTEE_LABELS.get(guarantee, guarantee)]


def _problems(contender: str, guarantee: str, entry: Entry) -> list[str]:
    """Bullet lines for a failed entry and each failed run, with the problems recorded."""
    who = " · ".join(_label(contender, guarantee))
    out: list[str] = []
    if entry.get("ok") is False or entry.get("problems"):
        detail = "; ".join(map(str, entry.get("problems") or [])) or "failed (no detail recorded)"
        out.append(f"- ✗ {who}: {detail}")
    for i, run in enumerate(entry.get("runs") or [], start=1):
        if isinstance(run, dict) and (run.get("ok") is False or run.get("problems")):
            detail = "; ".join(map(str, run.get("problems") or [])) or "failed (no detail recorded)"
            out.append(f"- ✗ {who}, run {i}: {detail}")
    return out


def _with_problems(lines: list[str], problems: list[str]) -> list[str]:
    """A table followed by its list of failures, if any."""
    if problems:
        lines += ["", "Failures:", "", *problems]
    return lines


# -- markdown sections -------------------------------------------------------------------------
def _header(results: Results) -> list[str]:
    """Title, method paragraph, smoke warning and the run's setup."""
    reps = results.get("repetitions")
    over = f"{reps} repetition{'' if reps == 1 else 's'}" if _is_num(reps) else "the repetitions"
    interval = results.get("commit_interval_s")
    lines = [
        "# Benchmarks",
        "",
        "streamproc against Quix Streams and a bare confluent-kafka loop (the *ceiling*: the "
        "same per-record logic with no framework), on the same broker, input and business "
        "logic (`bench/workloads.py`). Throughput workloads run in drain mode: the input is "
        "produced before the run, then each contender runs as its own process with a fresh "
        "consumer group until all input is committed. Records/s is input records divided by "
        "the wall time from the first record consumed to the last offset committed, so start-up "
        "and the group join are not counted. Peak RSS is the process's own high-water mark "
        "(VmHWM); CPU seconds (user + system) come from its rusage. Each repetition runs "
        "every contender once, interleaved "
        "(A B C A B C …), so drift on the machine hits all contenders alike; the tables give "
        f"the median over {over}."
        + (f" Every contender commits (or commits its transaction) every {interval:g} s."
           if _is_num(interval) else ""),
        "",
    ]
    if results.get("smoke"):
        lines += ["> **Smoke run**: reduced sizes, not representative figures.", ""]
    return [*lines, *_setup(results)]


def _setup(results: Results) -> list[str]:
    m = results.get("machine") or {}
    machine = ", ".join(p for p in (
        f"{m['cores']} cores" if m.get("cores") is not None else "",
        f"{_num(m.get('ram_gib'), 1)} GiB RAM" if m.get("ram_gib") is not None else "",
        str(m.get("cpu") or ""), str(m.get("os") or "")) if p) or DASH
    versions = results.get("versions") or {}
    listed = ", ".join(f"{VERSION_LABELS.get(k, k)} {v}" for k, v in versions.items()) or DASH
    return [
        f"- **Date:** {_date(results)}",
        f"- **Machine:** {machine}",
        f"- **Versions:** {listed}",
        f"- **Commit interval:** {_num(results.get('commit_interval_s'), 1)} s",
        f"- **Repetitions:** {_num(results.get('repetitions'))}",
    ]


def _workload_intro(name: str, workload: dict[str, Any]) -> list[str]:
    facts = [f"{_num(workload[key])} {label}" for key, label in (
        ("input_records", "input records"), ("partitions", "partitions"), ("keys", "keys"),
        ("words_per_line", "words per line"), ("window_ms", "ms windows"),
        ("grace_ms", "ms grace"), ("output_windows", "output windows")) if key in workload]
    lines = [f"### {name}: {workload.get('title') or ''}".rstrip(": "), ""]
    return [*lines, ", ".join(facts) + ".", ""] if facts else lines


def _runs(entry: Entry) -> str:
    """Per-run rates, failed runs marked ✗."""
    out = []
    for run in entry.get("runs") or []:
        if not isinstance(run, dict):
            continue
        rps = run.get("rps")
        text = _k(rps) if _is_num(rps) else "failed"
        out.append(text + (" ✗" if run.get("ok") is False else ""))
    return ", ".join(out) or DASH


def _throughput(name: str, workload: dict[str, Any]) -> list[str]:
    unit = workload.get("unit") or "records/s"
    ratios = workload.get("ratios") or {}
    ratio_keys = _ordered({k for r in ratios.values() if isinstance(r, dict) for k in r},
                          ("streamproc/quix", "streamproc/ceiling"))
    header = ["Contender", "Guarantee", f"Median {unit}", "Peak RSS MB", "CPU s",
              f"Runs ({unit})", "OK", *ratio_keys]
    rows, problems = [], []
    for contender, guarantee, entry in _entries(workload):
        rps = entry.get("median_rps")
        by_guarantee = ratios.get(guarantee) or {}
        rows.append([
            *_label(contender, guarantee),
            _num(rps) if _is_num(rps) else "failed",
            _num(entry.get("median_peak_rss_mb"), 1), _num(entry.get("median_cpu_s"), 1),
            _runs(entry), _ok_mark(entry),
            *[_ratio(by_guarantee.get(k)) if k.split("/")[0] == contender else ""
              for k in ratio_keys]])
        problems += _problems(contender, guarantee, entry)
    if not rows:
        return [*_workload_intro(name, workload), "_No results recorded._", ""]
    return [*_workload_intro(name, workload), *_with_problems(_table(header, rows), problems), ""]


def _latency(name: str, workload: dict[str, Any]) -> list[str]:
    rate, duration = workload.get("rate_rps"), workload.get("duration_s")
    intro = [f"### {name}: {workload.get('title') or 'latency'}", "",
             f"Input produced at {_num(rate)} records/s for {_num(duration)} s; end-to-end "
             "latency percentiles in milliseconds (median over repetitions).", ""]
    header = ["Contender", "Guarantee", "p50 ms", "p99 ms", "p99.9 ms", "Received",
              "Runs p99 ms", "OK"]
    rows, problems = [], []
    for contender, guarantee, entry in _entries(workload):
        per_run = ", ".join(_num(r.get("p99_ms"), 0) for r in entry.get("runs") or []
                            if isinstance(r, dict)) or DASH
        rows.append([*_label(contender, guarantee),
                     *[_num(entry.get(k), 0) for k in ("p50_ms", "p99_ms", "p999_ms")],
                     _num(entry.get("received")), per_run, _ok_mark(entry)])
        problems += _problems(contender, guarantee, entry)
    if not rows:
        return [*intro, "_No results recorded._", ""]
    return [*intro, *_with_problems(_table(header, rows), problems), ""]


def _recovery(name: str, workload: dict[str, Any]) -> list[str]:
    intro = [f"### {name}: {workload.get('title') or 'recovery'}", "",
             f"State of {_num(workload.get('keys'))} keys: time to restore it from the "
             "changelog, from a fresh start to the first output, and from a SIGKILL to the "
             "first output of the restarted process.", ""]
    header = ["Contender", "Guarantee", "Restored records", "Restore s", "Restore records/s",
              "Fresh start → output s", "Kill → first output s", "OK"]
    rows, problems, restarts = [], [], []
    for contender, guarantee, entry in _entries(workload):
        rows.append([*_label(contender, guarantee), _num(entry.get("restore_records")),
                     _num(entry.get("restore_s"), 2), _num(entry.get("restore_rps")),
                     _num(entry.get("fresh_start_to_output_s"), 2),
                     _num(entry.get("kill_to_first_output_s"), 2), _ok_mark(entry)])
        problems += _problems(contender, guarantee, entry)
        if entry.get("supervisor_restarts"):
            restarts.append(f"{contender}: crashed {entry['supervisor_restarts']} time(s) while "
                            f"recovering from the kill and was restarted (included in its kill "
                            f"→ first output time): {entry.get('restart_causes')}")
    if not rows:
        return [*intro, "_No results recorded._", ""]
    lines = _with_problems(_table(header, rows), problems)
    if restarts:
        lines += ["", "Restarts (like a supervisor's):", "", *restarts]
    return [*intro, *lines, ""]


def _other(name: str, workload: Any) -> list[str]:
    """A workload of unknown shape: every scalar field of every entry."""
    intro = [f"### {name}: {workload.get('title') or ''}".rstrip(": ")
             if isinstance(workload, dict) else f"### {name}", ""]
    entries = list(_entries(workload)) if isinstance(workload, dict) else []
    fields = sorted({k for _, _, e in entries for k, v in e.items()
                     if not isinstance(v, dict | list) and k != "ok"})
    if not entries:
        return [*intro, "_No results recorded._", ""]
    rows = [[*_label(c, g), *[_num(e.get(f), 2) if _is_num(e.get(f))
                              else str(e.get(f, DASH) or DASH) for f in fields], _ok_mark(e)]
            for c, g, e in entries]
    problems = [line for c, g, e in entries for line in _problems(c, g, e)]
    table = _table(["Contender", "Guarantee", *fields, "OK"], rows)
    return [*intro, *_with_problems(table, problems), ""]


SECTIONS: dict[str, Callable[[str, Any], list[str]]] = {
    "throughput": _throughput, "latency": _latency, "recovery": _recovery, "other": _other}


def _targets(results: Results) -> list[str]:
    targets = [t for t in results.get("targets") or [] if isinstance(t, dict)]
    if not targets:
        return []
    verdict: dict[Any, str] = {True: "✅ met", False: "❌ not met"}
    rows = [[str(t.get("name", DASH)), _num(t.get("value"), 2), _num(t.get("target"), 2),
             verdict.get(t.get("met"), DASH)] for t in targets]
    header = ["Target", "Measured", "Required", "Result"]
    return ["## Targets", "", *_table(header, rows, left=1), ""]


def _footer(results: Results, png_name: str) -> list[str]:
    notes = [f"- {note}" for note in results.get("notes") or []]
    lines = ["## Notes", "", *notes, ""] if notes else []
    return [*lines,
            "## Reproduce", "",
            "Reproduce: `python bench/run.py` (writes `bench/results.json`); "
            "`python bench/report.py` regenerates this file and the chart from results.json.",
            "", f"![throughput]({png_name})"]


def render_markdown(results: Results, png_name: str = "benchmarks.png") -> str:
    """The generated markdown (without markers); ``png_name`` is the chart's path relative to
    the markdown file."""
    workloads = results.get("workloads") or {}
    by_kind: dict[str, list[str]] = {kind: [] for kind in SECTIONS}
    for name in _workload_names(results):
        by_kind[_kind(workloads[name])].append(name)
    titles = {"throughput": "Throughput", "latency": "Latency", "recovery": "Recovery",
              "other": "Other workloads"}
    lines = [*_header(results), ""]
    for kind, names in by_kind.items():
        if names:
            lines += [f"## {titles[kind]}", ""]
        for name in names:
            lines += SECTIONS[kind](name, workloads[name])
    lines += _targets(results) + _footer(results, png_name)
    return "\n".join(lines).strip() + "\n"


def _splice(existing: str | None, generated: str) -> str:
    """The whole markdown file: the generated block between the markers, hand-written text
    around it kept."""
    block = f"{START}\n{generated}{END}"
    if existing is None:
        return block + PLACEHOLDER
    start, end = existing.find(START), existing.find(END)
    if start == -1 and end == -1:
        return f"{block}\n\n{existing}"
    if start == -1 or end < start:
        raise ValueError(f"malformed generated markers: need {START} before {END}")
    return existing[:start] + block + existing[end + len(END):]


# -- the chart ---------------------------------------------------------------------------------
def _chart_series(results: Results) -> tuple[list[str], list[tuple[str, str]]]:
    """Throughput workload names and every (contender, guarantee) seen among them."""
    workloads = results.get("workloads") or {}
    names = [n for n in _workload_names(results) if _kind(workloads[n]) == "throughput"]
    seen = {(c, g) for n in names for c, g, _ in _entries(workloads[n])}
    contenders = _ordered({c for c, _ in seen}, CONTENDER_ORDER)
    guarantees = _ordered({g for _, g in seen}, GUARANTEE_ORDER)
    return names, [(c, g) for c in contenders for g in guarantees if (c, g) in seen]


def _colour(contender: str, extra: list[str]) -> str:
    """The contender's fixed colour; contenders without one take the next spare colour."""
    if contender in COLOURS:
        return COLOURS[contender]
    if contender not in extra:
        extra.append(contender)
    return EXTRA_COLOURS[(extra.index(contender)) % len(EXTRA_COLOURS)]


def _chart_title(results: Results) -> str:
    cores = (results.get("machine") or {}).get("cores")
    interval = results.get("commit_interval_s")
    parts = [f"streamproc benchmarks, {_date(results)}",
             f"{cores} cores" if cores is not None else "",
             f"commit interval {interval:g} s" if _is_num(interval) else "",
             "SMOKE RUN" if results.get("smoke") else ""]
    return " · ".join(p for p in parts if p)


def _draw_bars(ax: Any, results: Results, names: list[str],
               series: list[tuple[str, str]]) -> None:
    """One group per workload; only the series a workload has get a slot, centred."""
    workloads = results.get("workloads") or {}
    extra: list[str] = []
    width = 0.8 / max(len(series), 1)
    drawn: set[tuple[str, str]] = set()
    for x, name in enumerate(names):
        entries = {(c, g): e for c, g, e in _entries(workloads[name])}
        present = [s for s in series if s in entries]
        for i, (contender, guarantee) in enumerate(present):
            pos = x + (i - (len(present) - 1) / 2) * width
            value = entries[(contender, guarantee)].get("median_rps")
            label = " · ".join(_label(contender, guarantee))
            bars = ax.bar(pos, value if _is_num(value) else 0, width * 0.92,
                          color=_colour(contender, extra), alpha=1.0 if guarantee == "eos" else 0.5,
                          hatch="" if guarantee == "eos" else "//", edgecolor="white",
                          label="_nolegend_" if (contender, guarantee) in drawn else label)
            drawn.add((contender, guarantee))
            if _is_num(value):
                ax.bar_label(bars, labels=[_k(value)], fontsize=8, padding=2)
            else:
                ax.text(pos, 0, " failed", rotation=90, ha="center", va="bottom", fontsize=8,
                        color="#c00000")


def render_chart(results: Results, png_path: Path) -> None:
    """Grouped bar chart of median throughput per workload, contender and guarantee."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    names, series = _chart_series(results)
    fig = Figure(figsize=(10, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(_chart_title(results), fontsize=11)
    if not series:
        ax.text(0.5, 0.5, "no throughput results", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        _draw_bars(ax, results, names, series)
        workloads = results.get("workloads") or {}
        ax.set_xticks(range(len(names)), [_tick(n, workloads[n]) for n in names])
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel("median throughput (input records/s)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _k(v) if v else "0"))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(len(series), 3),
                  fontsize=9, frameon=False)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)


def _tick(name: str, workload: dict[str, Any]) -> str:
    """``W1``, or ``W4 (lines/s)`` when the workload's unit is not records/s."""
    unit = workload.get("unit") or "records/s"
    return name if unit == "records/s" else f"{name} ({unit})"


# -- entry points ------------------------------------------------------------------------------
def render(results: Results, md_path: Path, png_path: Path) -> None:
    """Write the markdown report (keeping hand-written text outside the markers) and the chart."""
    png_name = Path(os.path.relpath(png_path.resolve(), md_path.resolve().parent)).as_posix()
    existing = md_path.read_text(encoding="utf-8") if md_path.exists() else None
    text = _splice(existing, render_markdown(results, png_name))
    render_chart(results, png_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """The script: read results.json, write the markdown and the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks.png")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    render(results, args.md, args.png)
    print(f"wrote {args.md} and {args.png}")


if __name__ == "__main__":
    main()
