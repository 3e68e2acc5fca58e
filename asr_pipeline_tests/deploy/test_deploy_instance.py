"""deploy/dagster.yaml for real: Dagster's own storage in MariaDB (dagster-mysql), and ingest batches processed in
parallel, each a run in its own process."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from asr_pipeline import cli
from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.database import TranscriptTable

pytestmark = [pytest.mark.mysql, pytest.mark.slow]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


@pytest.fixture()
def mysql_instance_home(mysql_server_url, tmp_path, monkeypatch):
    url = make_url(mysql_server_url)
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    home = tmp_path / "dagster_mysql"
    home.mkdir()
    shutil.copy(DEPLOY, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for key, value in {"HOST": url.host, "PORT": str(url.port or 3306), "USER": url.username,
                       "PASSWORD": url.password or "", "DB": name}.items():
        monkeypatch.setenv(f"DAGSTER_MYSQL_{key}", value)
    yield url.set(database=name)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name}"))
    engine.dispose()


def test_ingest_batches_run_in_parallel_processes_with_mysql_storage(
        pipeline_env, mysql_instance_home, monkeypatch):
    monkeypatch.setenv("ASR_BATCH_ROWS", "14")  # 41 rows -> 3 batches
    instance = dg.DagsterInstance.get()
    from dagster_mysql import MySQLEventLogStorage, MySQLRunStorage

    assert isinstance(instance.run_storage, MySQLRunStorage)
    assert isinstance(instance.event_log_storage, MySQLEventLogStorage)

    calls = []  # the CLI's own order of starting batch processes and polling them

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            self.batch = "ingest-batch" in args
            if self.batch:
                calls.append("start")

        def poll(self):
            if self.batch:
                calls.append("poll")
            return super().poll()

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    cli.main(["ingest", "--parallel", "3"])
    assert calls[:4] == ["start", "start", "start", "poll"]  # all three running before it waited on any

    runs = instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest"))
    assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(
        instance.get_dynamic_partitions("ingest_batches"))
    # each process's run carries the plan's tags for its batch, as the sensor's runs do
    table = TranscriptTable(os.environ["ASR_DB_URL"])
    for run in runs:
        first, last = parse_batch_key(run.tags["dagster/partition"])
        assert run.tags["asr/fingerprint"] == table.batch_fingerprint(first, last)
        assert (run.tags["asr/reason"], run.tags["asr/stage"]) == ("new", "ingest")
    table.dispose()
    # each batch ran in a process of its own, its three steps inside that process (the ingest job's in-process
    # executor: no process started per step)
    run_pids = []
    for run in runs:
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
        step_pids = [e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START]
        [started_by] = {e.pid for e in events if e.event_type == dg.DagsterEventType.RUN_START}
        assert len(step_pids) == 3 and set(step_pids) == {started_by}, (step_pids, started_by)
        run_pids.append(started_by)
    assert len(set(run_pids)) == 3
    # and all of it is in MariaDB, in Dagster's own database
    engine = sa.create_engine(mysql_instance_home)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM runs WHERE pipeline_name = 'asr_ingest'")).scalar() == 3
        assert conn.execute(sa.text("SELECT COUNT(*) FROM event_logs WHERE dagster_event_type = "
                                    "'ASSET_MATERIALIZATION'")).scalar() == 9
    engine.dispose()
    features = sorted((pipeline_env / "storage" / "featurized_shards").glob("ids-*"))
    assert len(features) == 3


def test_the_kubernetes_run_config_is_valid_for_the_retrain_job_on_the_k8s_executor(monkeypatch, tmp_path):
    """ASR_EXECUTOR=k8s swaps in dagster-k8s's k8s_job_executor; deploy/kubernetes/run_config.yaml must then be
    accepted by asr_retrain's config schema as it is (no cluster is needed to check that much)."""
    import yaml

    from asr_pipeline.definitions import build_definitions

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASR_EXECUTOR", "k8s")
    job = build_definitions().resolve_job_def("asr_retrain")
    assert job.executor_def.name == "k8s"
    config = yaml.safe_load((DEPLOY.parent / "kubernetes" / "run_config.yaml").read_text())
    resolved = dg.validate_run_config(job, config)
    assert resolved["ops"]["finetuned_checkpoint"]["config"]["launcher"] == "torchrun"
    # and every Kubernetes manifest in deploy/ at least parses
    for path in (DEPLOY.parent / "kubernetes").glob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text())), path
