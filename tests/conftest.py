"""Session fixtures: one real Kafka broker (KRaft) for the whole run, started by the project's
own tooling unless STREAMPROC_BROKERS points at an existing cluster.

Parallel runs (pytest-xdist, ``-n N``): by default the N workers share one broker. The
controller process starts it in the background as soon as it is configured (so the JVM boots
while the workers start and collect), hands its data dir to the workers, and stops it at the
end. ``broker.start`` is idempotent and file-locked on that dir, so a worker that needs the
broker first just waits for it to be ready. ``STREAMPROC_TEST_BROKER=per-worker`` gives every
worker its own broker instead. Every test uses its own topics, application ids, consumer
groups and state dirs (``tests.harness.unique``, ``tmp_path``), so tests never see each other's
data on a shared broker.

Parallel runs also order the collection: the slowest tests and files first (``SLOW``), each
handed to the next free worker, so that no long test starts last and holds up the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc.kafka import broker

_SHARED_DIR = "streamproc_shared_broker_dir"
_shared_key = pytest.StashKey[tuple[Path, threading.Thread]]()

# Files whose tests share a module-scoped broker (or other module fixture) and must run in file
# order: one worker runs each of them whole. Every other test is scheduled on its own.
ONE_WORKER = frozenset({
    "tests/integration/test_bounded.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_least_privilege.py",
    "tests/integration/test_local_broker.py",
    "tests/integration/test_secured_broker.py",
})

# Rough seconds per test (or per ONE_WORKER file, for the whole file), from serial and parallel
# runs on the 2-core CI machine (``--durations``), keyed by node id without the leading
# ``tests/integration/`` (or ``tests/``). Only the order of the collection depends on these:
# the longest first, then everything else in collection order. A new slow test belongs here.
SLOW: dict[str, float] = {
    # with --soak only (STREAMPROC_SOAK_SCALE=10)
    "test_crash.py::test_kill9_at_random_moments_soak": 400,
    "test_hostile_fuzz.py::test_hostile_input_soak": 150,
    "test_reliability_smoke.py::test_every_scenario_is_exact[instances]": 300,
    "test_reliability_smoke.py::test_every_scenario_is_exact[brokers]": 150,
    "test_reliability_smoke.py::test_every_scenario_is_exact[io]": 280,
    "test_cluster.py": 90,
    "test_least_privilege.py": 80,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W6-quix]": 60,
    "test_bench_smoke.py::"
    "test_every_contender_produces_the_exact_expected_output[W6-streamproc]": 55,
    "test_secured_broker.py": 55,
    "test_zombie.py::test_frozen_instance_is_fenced_when_it_wakes": 48,
    "test_local_broker.py": 45,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W5-all]": 43,
    "test_rebalance.py::test_instance_joins_leaves_and_dies": 43,
    "test_crash.py::test_kill9_at_random_moments": 42,
    "test_windowed_crash.py::test_windowed_results_are_exact_under_repeated_kill9": 40,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W4-all]": 37,
    "test_bounded.py": 37,
    "test_workers.py::test_two_workers_share_the_work_and_a_killed_one_comes_back": 40,
    "test_crash.py::test_kill9_in_the_middle_of_a_restore": 35,
    "test_windowed_crash.py::test_windows_and_watermarks_move_with_their_partitions": 35,
    "test_crash.py::test_kill9_at_named_points[after_process]": 32,
    "test_crash.py::test_kill9_at_named_points[after_commit]": 31,
    "test_crash.py::test_kill9_at_named_points[before_commit]": 30,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W3-all]": 28,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W2-all]": 27,
    "test_dlq_cli.py::test_inspect_and_replay": 25,
    "test_rebalance.py::test_state_moves_with_its_partitions": 24,
    "test_disk_full.py::test_full_state_disk_stops_cleanly_and_a_restart_is_exact": 22,
    "test_broker_down.py::test_waits_for_the_broker_then_runs_exactly": 16,
    "test_bench_smoke.py::test_every_contender_produces_the_exact_expected_output[W1-all]": 23,
    "test_savepoints.py::test_windows_and_watermarks_carry_over_to_a_new_application": 20,
    "test_savepoints.py::test_second_app_from_a_savepoint_continues_exactly_like_the_original": 17,
    "browser/test_dashboard.py::test_dashboard_renders_the_running_topology": 15,
    "test_hostile_fuzz.py::test_hostile_input_never_crashes_and_is_never_lost_across_a_kill": 14,
    "test_wordcount.py::test_state_dir_deleted_is_rebuilt_from_changelog": 14,
    "test_examples.py::test_example_end_to_end[hourly_counts]": 12,
    "test_http.py::test_endpoints_of_a_running_instance_and_of_one_that_restored": 12,
    "test_queryable_state.py::test_two_instances_answer_every_key": 12,
    "test_dlq_cli.py::test_replay_streams_chunks_each_its_own_transaction": 11,
    "test_hostile_input.py::test_forged_control_headers_never_become_watermarks": 11,
    "test_savepoints.py::test_refusals_name_the_problem_and_drop_is_explicit": 11,
    "test_wordcount.py::test_state_survives_restart_and_output_continues": 11,
    "test_examples.py::test_example_end_to_end[sessions]": 10,
    "test_examples.py::test_example_end_to_end[traffic_peaks]": 10,
    "test_savepoints.py::"
    "test_an_instance_killed_while_seeding_leaves_all_or_nothing[after_seed]": 10,
    "test_wordcount.py::test_wordcount_exact_counts[at_least_once]": 10,
    "test_examples.py::test_example_end_to_end[fraud_alerts]": 9,
    "test_examples.py::test_example_end_to_end[sensor_averages]": 9,
    "test_hostile_input.py::test_records_on_partitions_added_while_running_are_dead_lettered": 9,
    "test_reset.py::test_dry_run_then_reset_to_earliest_recounts_from_one": 9,
    "test_savepoints.py::test_an_instance_killed_while_seeding_leaves_all_or_nothing[mid_seed]": 9,
    "test_wordcount.py::"
    "test_consumed_repartition_records_are_deleted_and_old_timestamps_are_safe": 9,
    "test_avro.py::test_sensor_averages_on_avro": 8,
    "test_avro.py::test_wordcount_on_avro": 8,
    "test_bad_input.py::test_dead_letter_keeps_bad_records_with_their_coordinates": 8,
    "test_bad_input.py::test_skip_counts_and_drops": 8,
    "test_wordcount.py::test_wordcount_exact_counts[exactly_once]": 8,
    "test_dlq_cli.py::test_expected_replay_failures_are_one_line": 7,
    "test_hostile_input.py::"
    "test_a_state_value_over_the_limit_dead_letters_the_record_that_made_it": 7,
    "test_wordcount.py::test_wordcount_exact_counts[at_most_once]": 7,
    "test_bad_input.py::test_fail_stops_and_commits_nothing_past_the_bad_record": 6,
    "test_hostile_input.py::test_a_negative_create_time_is_dead_lettered": 5,
    "test_hostile_input.py::test_max_record_bytes_is_checked_against_the_topics_at_start": 5,
    "test_hostile_input.py::"
    "test_records_too_large_with_their_headers_are_dead_lettered_and_cut_to_fit": 5,
    "test_hostile_input.py::"
    "test_timestamps_out_of_range_are_dead_lettered_and_never_move_the_watermark": 5,
    "test_hostile_input.py::test_unreadable_headers_many_headers_null_keys_and_empty_values": 5,
    "test_http.py::test_healthz_is_503_while_the_loop_is_stuck_and_recovers": 5,
    "test_queryable_state.py::test_forged_registry_entries_are_ignored": 4,
}


def _workers(config: pytest.Config) -> int:
    n = getattr(config.option, "numprocesses", None)
    return int(n) if n else 0


def pytest_configure(config: pytest.Config) -> None:
    if (hasattr(config, "workerinput") or os.environ.get("STREAMPROC_BROKERS")
            or config.option.collectonly):
        return
    if _workers(config) == 0 or os.environ.get("STREAMPROC_TEST_BROKER") == "per-worker":
        return
    data_dir = Path(tempfile.mkdtemp(prefix="streamproc-test-kafka-"))

    def boot() -> None:
        # A failure here is reported in full by the workers' own start() on the same dir.
        with contextlib.suppress(Exception):
            broker.start(data_dir=data_dir)

    thread = threading.Thread(target=boot, name="shared-broker-start", daemon=True)
    thread.start()
    config.stash[_shared_key] = (data_dir, thread)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker where the shared broker lives."""
    shared = node.config.stash.get(_shared_key, None)
    if shared is not None:
        node.workerinput[_SHARED_DIR] = str(shared[0])


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_shared_key, None)
    if shared is None:
        return
    data_dir, thread = shared
    thread.join(120)
    broker.stop(data_dir=data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


def _weight(item: pytest.Item) -> float:
    file = item.nodeid.split("::", 1)[0]
    key = file if file in ONE_WORKER else item.nodeid
    return SLOW.get(key.removeprefix("tests/integration/").removeprefix("tests/"), 0.0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the soak tests (marker 'soak'): the crash and hostile-input "
                     "suites at many times their CI size; STREAMPROC_SOAK_SCALE sets how many "
                     "(default 10)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Soak tests are larger runs of guarantees CI already tests at its own size: on demand.
    if not config.getoption("--soak"):
        skip = pytest.mark.skip(reason="soak test: run with --soak")
        for item in items:
            if "soak" in item.keywords:
                item.add_marker(skip)
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps the collection order
    # A stable sort: equal weights (most tests: 0) keep the collection order, and so do the
    # tests of a ONE_WORKER file, which all weigh the same.
    items.sort(key=lambda item: -_weight(item))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (xdist's default ``--dist load``): every test is its own unit of work, handed to
    the next free worker in collection order (slowest first), except that each ONE_WORKER file
    is one unit. (Not ``--dist loadgroup``: its xdist_group marks do not take effect with
    pytest 9, which no longer reads the ``_nodeid`` that xdist 3.8 rewrites.)"""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist mode
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if file in ONE_WORKER else nodeid

    config.option.loadscopereorder = False  # keep the collection's slowest-first order
    return Scheduling(config, log)


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("STREAMPROC_BROKERS")
    if existing:
        yield existing
        return
    shared = getattr(request.config, "workerinput", {}).get(_SHARED_DIR)
    if shared:  # started (and stopped) by the xdist controller; waits until it is ready
        yield broker.start(data_dir=Path(shared)).bootstrap
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    b = broker.start(data_dir=data_dir)
    try:
        yield b.bootstrap
    finally:
        broker.stop(data_dir=data_dir)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a file system that really fills up (ENOSPC from the kernel). Skipped
    where mounting is not allowed (needs root or CAP_SYS_ADMIN). Unmounted lazily, so a
    process a test failed to stop does not leave the mount behind."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN): "
                    f"{got.stderr.strip() or got.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
