"""defs/common/event_log.py: the UI's live log of a run (instance.watch_event_logs), read by a thread for each
viewer from its own cursor: a run another process executes, viewers that come late, fail or leave."""

from __future__ import annotations

import threading
import time

from dagster._core.storage.event_log.base import EventLogCursor

from asr_pipeline_tests.defs.common.event_log_runs import in_another_process, materialize, open_instance


def test_a_run_written_by_another_process_is_watched_live(tmp_path, monkeypatch):
    """The UI's live log (instance.watch_event_logs) of a run another process executes, while it runs."""
    instance = open_instance(tmp_path / "dagster", monkeypatch)
    materialize(instance)  # this process holds the index open, as a webserver does
    run_id = "0f0f0f0f-1111-2222-3333-444444444444"
    seen = []
    arrived = threading.Event()

    def on_event(entry, cursor):
        seen.append(entry)
        if entry.user_message == "halfway there":
            arrived.set()

    instance.watch_event_logs(run_id, None, on_event)
    worker = in_another_process(
        tmp_path / "dagster", f"dg.Definitions(assets=[tests.slow]).resolve_implicit_global_asset_job_def()"
                              f".execute_in_process(instance=instance, run_id='{run_id}')",
        env={"SLOW_ASSET_SECONDS": "20"})
    try:
        assert arrived.wait(15), (worker.poll(), [e.user_message for e in seen])
        assert worker.poll() is None  # seen while the run still runs
    finally:
        worker.kill()
        worker.communicate()
        instance.end_watch_event_logs(run_id, on_event)
        instance.dispose()


def test_each_viewer_gets_the_events_after_its_own_cursor_and_a_failing_one_stops_nobody(tmp_path, monkeypatch):
    instance = open_instance(tmp_path / "dagster", monkeypatch)
    (run_id,) = materialize(instance)
    records = instance.get_records_for_run(run_id).records
    middle = len(records) // 2
    after_middle = [r.storage_id for r in records[middle + 1:]]
    got = {"first": [], "later": [], "failing": []}
    done = threading.Event()

    def viewer(name):
        def on_event(entry, cursor):
            got[name].append(EventLogCursor.parse(cursor).storage_id())
            if name == "failing":
                raise RuntimeError("the viewer's browser went away")
            if name == "later" and len(got["later"]) == len(after_middle):
                done.set()
        return on_event

    viewers = {name: viewer(name) for name in got}
    instance.watch_event_logs(run_id, None, viewers["first"])
    instance.watch_event_logs(run_id, None, viewers["failing"])
    time.sleep(1)  # the first viewers have read the whole run
    instance.watch_event_logs(run_id, EventLogCursor.from_storage_id(records[middle].storage_id).to_string(),
                              viewers["later"])
    assert done.wait(10), got
    # each in order, from its own cursor; the failing one got every event regardless
    assert got["first"] == got["failing"] == [r.storage_id for r in records]
    assert got["later"] == after_middle
    storage = instance.event_log_storage
    watches = list(storage._watches.values())
    for name, callback in viewers.items():
        instance.end_watch_event_logs(run_id, callback)
    for watch in watches:
        watch.join(5)
    assert not storage._watches and not any(watch.is_alive() for watch in watches)
    instance.watch_event_logs(run_id, None, viewers["first"])
    instance.dispose()  # stops the viewers it has
    assert not [t for t in threading.enumerate() if t.name.startswith("asr-watch-")]
