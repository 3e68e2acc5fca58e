"""Automation through the real daemon: `dagster-daemon run` on an instance configured as the CLI writes it
(cli.INSTANCE_CONFIG: pools, run queue limits, run retries), new_transcripts_sensor and nightly_retraining turned
on, rows in MariaDB read by a user with a real password. The test only watches: what the daemon launches, how often, in what order, with what result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from asr_pipeline import cli
from asr_pipeline_tests.conftest import create_notebook_table

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 600
GOOD, MISSING, LATE = "ids-0000000001-0000000040", "ids-0000000041-0000000041", "ids-0000000042-0000000046"
POOL_STEPS = {"finetuned_checkpoint", "evaluation_report"}


def _insert(engine, rows):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"), rows)


def _archive_rows(clips):
    return [{"p": "/cul_m01/archive/" + Path(c["audio_path"]).name, "t": c["transcript"]} for c in clips]


@pytest.fixture()
def daemon_home(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir, password_user):
    """An instance with the project's dagster.yaml, a workspace loading the code location, and the environment a
    deployment would give the daemon (plus a 5 s sensor interval and a schedule that fires every minute)."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(cli.INSTANCE_CONFIG)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "asr_pipeline_tests.defs.daemon_location", "location_name": "asr_pipeline",
        "working_directory": str(REPO)}}]}))
    audio_dir = Path(korean_clips[0]["audio_path"]).parent
    user, password = password_user  # the daemon reads the table as a user with a real password
    database_url = sa.make_url(mysql_database).set(username=user, password=password)
    settings = {
        "ASR_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(dagster_home),
        "ASR_DB_URL": database_url.render_as_string(hide_password=False),
        "ASR_PATH_MAP": f"/cul_m01/archive/={audio_dir}/", "ASR_BASE_MODEL": str(tiny_model_dir),
        "ASR_SPLIT_RATIOS": "60/20/20", "ASR_BATCH_ROWS": "40", "ASR_SENSOR_INTERVAL_SECONDS": "5",
        "ASR_BATCH_MAX_WAIT_MINUTES": "0",  # rows inserted later become a batch at the next tick, not in an hour
        "ASR_RETRAIN_CRON": "* * * * *", "ASR_RETRAIN_TIMEZONE": "UTC",
        # training and evaluation too in one process a run (ingest runs that way by default): the same pools and
        # retries, less CPU on a small machine
        "ASR_EXECUTOR": "in_process",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    engine = create_notebook_table(mysql_database)
    # 40 clips, then a row whose file is missing: two batches, the second fails its quarantine check every time
    _insert(engine, _archive_rows(korean_clips) + [{"p": "/cul_m01/archive/DEMO_202601019999_00001.wav",
                                                    "t": "파일이 없는 행"}])
    yield {"password": password, "workspace": workspace, "engine": engine, "late_rows": _archive_rows(korean_clips[:5]), "dagster_home": dagster_home, "tmp": tmp_path}
    engine.dispose()


class Daemon:
    """`dagster-daemon run` in its own process group, always killed with everything it started."""

    def __init__(self, workspace: Path, log: Path):
        self.log_path = log
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
            cwd=workspace.parent, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                os.killpg(self.process.pid, signal.SIGKILL)  # anything left in the group (launched runs)
                return
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue


def _submit(instance, workspace, location, repository, job_name: str) -> str:
    """What the Launchpad's "Launch run" does: a run with the job's default config, handed to the run queue."""
    from dagster._cli.job import _create_run

    remote_job = repository.get_full_job(job_name)
    run = _create_run(instance=instance, code_location=location, remote_repo=repository, remote_job=remote_job,
                      run_config={}, tags={}, op_selection=None, run_id=None)
    instance.submit_run(run.run_id, workspace)
    return run.run_id


def _partition_roots(runs, key):
    return [r for r in runs if r.tags.get("dagster/partition") == key and r.parent_run_id is None]


def _retries_of(runs, root):
    return [r for r in runs if r.root_run_id == root.run_id]


def _done(run) -> bool:
    return run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _materialized_by(instance, asset: str, run_id: str) -> bool:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=50).records
    return any(r.run_id == run_id for r in records)


def _describe(runs) -> str:
    return "\n".join(f"{r.job_name} {r.tags.get('dagster/partition', '')} {r.status.value} root={r.root_run_id} "
                     f"schedule={r.tags.get('dagster/schedule_name', '')}" for r in runs)


@pytest.mark.timeout(DEADLINE_S + 300)
def test_the_daemon_runs_sensor_schedule_pools_and_retries(daemon_home):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    max_retries = yaml.safe_load(cli.INSTANCE_CONFIG)["run_retries"]["max_retries"]
    instance = dg.DagsterInstance.get()
    daemon = Daemon(daemon_home["workspace"], daemon_home["tmp"] / "daemon.log")
    try:
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(daemon_home["workspace"])])) as ctx:
            workspace = ctx.create_request_context()
            location = workspace.get_code_location("asr_pipeline")
            repository = next(iter(location.get_repositories().values()))
            sensor = repository.get_sensor("new_transcripts_sensor")
            schedule = repository.get_schedule("nightly_retraining")
            assert sensor.min_interval_seconds == 5 and schedule.cron_schedule == "* * * * *"
            instance.start_sensor(sensor)  # what the Automation page's toggle does
            instance.start_schedule(schedule)

            started = time.monotonic()
            train_runs: list[str] = []
            inserted_late = schedule_stopped = False
            while True:
                assert time.monotonic() - started < DEADLINE_S, \
                    f"not done in {DEADLINE_S} s:\n{_describe(instance.get_runs())}\n{daemon.log_tail()}"
                assert daemon.process.poll() is None, f"the daemon exited:\n{daemon.log_tail()}"
                runs = instance.get_runs()
                good = _partition_roots(runs, GOOD)
                if not train_runs and good and good[0].status == dg.DagsterRunStatus.SUCCESS:
                    # features exist: two trainings asked for at once must take the pool one after the other
                    train_runs = [_submit(instance, workspace, location, repository, "asr_train") for _ in range(2)]
                if (train_runs and not inserted_late
                        and all(_done(instance.get_run_by_id(run_id)) for run_id in train_runs)):
                    # new rows after the last checkpoint: the sensor makes one new batch of exactly them, and the
                    # schedule's next minute has a changed batch to retrain on
                    _insert(daemon_home["engine"], daemon_home["late_rows"])
                    inserted_late = True
                scheduled = [r for r in runs if r.tags.get("dagster/schedule_name") == "nightly_retraining"]
                if scheduled and not schedule_stopped:
                    # one scheduled run is what we watch; later minutes would only queue more of the same
                    instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
                    schedule_stopped = True
                missing = _partition_roots(runs, MISSING)
                retries = _retries_of(runs, missing[0]) if missing else []
                late = _partition_roots(runs, LATE)
                if (inserted_late and late and _done(late[0]) and len(retries) >= max_retries
                        and all(_done(r) for r in retries) and scheduled and _done(scheduled[0])
                        and all(_done(instance.get_run_by_id(run_id)) for run_id in train_runs)):
                    time.sleep(15)  # three more sensor ticks, and time for a retry too many to appear
                    break
                time.sleep(3)

            runs = instance.get_runs()
            ticks = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=500)
            state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
    finally:
        daemon.stop()

    summary = _describe(runs)
    # the sensor: each batch launched once however many ticks saw it, the cursor kept between ticks
    assert len(ticks) >= 6, summary
    for key in (GOOD, LATE):
        roots = _partition_roots(runs, key)
        assert len(roots) == 1 and roots[0].status == dg.DagsterRunStatus.SUCCESS, f"{key}\n{summary}"
        assert not _retries_of(runs, roots[0]), summary
    assert json.loads(state.instigator_data.cursor)["high_water"] == 46

    # run_retries: the failing batch is retried exactly max_retries times, then left failed
    root = _partition_roots(runs, MISSING)[0]
    chain = sorted(_retries_of(runs, root), key=lambda r: int(r.tags["dagster/retry_number"]))
    assert [int(r.tags["dagster/retry_number"]) for r in chain] == list(range(1, max_retries + 1)), summary
    assert all(r.status == dg.DagsterRunStatus.FAILURE for r in [root, *chain]), summary

    # the pool asr_training: no two training or evaluation steps ever ran at once, though two trainings were
    # waiting together
    intervals = sorted(
        (stat.start_time, stat.end_time, run.run_id, stat.step_key)
        for run in runs if run.job_name in ("asr_train", "asr_retrain")
        for stat in instance.get_run_step_stats(run.run_id) if stat.step_key in POOL_STEPS and stat.start_time)
    assert len({i[2] for i in intervals}) >= 3, summary
    for earlier, later in zip(intervals, intervals[1:]):
        assert earlier[1] is not None and earlier[1] <= later[0], f"overlap: {earlier} {later}"
    trains = [instance.get_run_record_by_id(run_id) for run_id in train_runs]
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in trains), summary
    assert max(r.create_timestamp.timestamp() for r in trains) < min(r.end_time for r in trains)

    # the password the daemon, its sensor and every launched run used is nowhere: logs, run configs, tags, event
    # logs, compute logs, any file the pipeline or Dagster wrote
    password = daemon_home["password"]
    assert password not in daemon.log_path.read_text(errors="replace")
    for each in runs:
        assert password not in json.dumps(each.run_config, default=str) + json.dumps(each.tags)
        assert not [e for e in instance.all_logs(each.run_id) if password in dg.serialize_value(e)]
    for root_dir in (daemon_home["dagster_home"], Path(os.environ["ASR_HOME"])):
        assert not [str(p) for p in root_dir.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]

    # the schedule's run trained, evaluated and promoted: a checkpoint materialized by that very run
    run = next(r for r in runs if r.tags.get("dagster/schedule_name") == "nightly_retraining")
    assert run.status == dg.DagsterRunStatus.SUCCESS, summary
    assert _materialized_by(instance, "finetuned_checkpoint", run.run_id)
    assert _materialized_by(instance, "evaluation_report", run.run_id)
