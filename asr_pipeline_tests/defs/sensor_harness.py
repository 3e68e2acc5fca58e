"""Evaluating new_transcripts_sensor the way the Dagster daemon does, against the real MariaDB and a real instance.

`Daemon.tick()` evaluates the sensor with the cursor it kept, then does what the daemon does with the result: a run
request whose run_key already has a run is dropped, the others become runs. With `execute=True` the runs execute
in-process (the real asr_ingest job: manifest, 16 kHz audio, features); otherwise they are created NOT_STARTED, like runs
the daemon has submitted and the queue has not started yet.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from asr_pipeline import cli
from asr_pipeline.core.batches import parse_batch_key

RUN_KEY_TAG = "dagster/run_key"
SENSOR_TAG = "dagster/sensor_name"


def job_origin(job_name: str) -> RemoteJobOrigin:
    """The code location's origin of a job (workspace.yaml's), which a QUEUED run must carry: the daemon's queue
    launches it from there."""
    return RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="asr_pipeline.definitions"), location_name="asr_pipeline"),
        "__repository__"), job_name)


def insert_rows(engine: sa.Engine, clips: list[dict], numbers) -> None:
    """Row n points at clip (n-1) mod len(clips), stored the archive's way (/cul_m01/archive/<name>)."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": "/cul_m01/archive/" + Path(clips[(n - 1) % len(clips)]["audio_path"]).name,
                       "t": f"{n}번째 문장"} for n in numbers])


def audio_environment(monkeypatch, tmp_path: Path, database_url: str, clips: list[dict], model_dir: Path) -> None:
    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASR_DB_URL", database_url)
    monkeypatch.setenv("ASR_PATH_MAP", f"/cul_m01/archive/={Path(clips[0]['audio_path']).parent}/")
    monkeypatch.setenv("ASR_BASE_MODEL", str(model_dir))
    monkeypatch.setenv("ASR_BATCH_ROWS", "10")
    monkeypatch.setenv("ASR_BATCH_MAX_WAIT_MINUTES", "0")


def covered_ids(keys) -> list[int]:
    ids = []
    for key in keys:
        first, last = parse_batch_key(key)
        ids.extend(range(first, last + 1))
    return ids


class Daemon:
    def __init__(self):
        self.defs = cli._definitions()
        self.instance = cli._instance()
        self.sensor = self.defs.resolve_sensor_def("new_transcripts_sensor")
        self.job = self.defs.resolve_job_def("asr_ingest")
        self.cursor = None

    def evaluate(self) -> dg.SensorResult:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                     resources={"database": self.defs.resources["database"],
                                                "settings": self.defs.resources["settings"]}) as context:
            return self.sensor(context)

    def tick(self, commit: bool = True, execute: bool = False) -> dg.SensorResult:
        result = self.evaluate()
        if not commit:
            return result
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        for request in result.run_requests or []:
            if self.instance.get_runs_count(dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key})):
                continue  # the daemon de-duplicates run keys
            tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_TAG: self.sensor.name}
            if execute:
                self.job.execute_in_process(partition_key=request.partition_key, instance=self.instance, tags=tags,
                                            raise_on_error=False)
            else:
                self.instance.add_run(DagsterRun(job_name="asr_ingest", run_id=str(uuid.uuid4()),
                                                 status=dg.DagsterRunStatus.NOT_STARTED,
                                                 tags={**tags, "dagster/partition": request.partition_key}))
        return result

    def process(self, key: str, **tags) -> bool:
        """Run asr_ingest for one batch in-process (what a launched run does)."""
        return self.job.execute_in_process(partition_key=key, instance=self.instance, tags=tags,
                                           raise_on_error=False).success

    def states(self) -> dict[str, str]:
        from asr_pipeline.defs.ingest.batch_states import batch_states

        table = self.defs.resources["database"].open_table()
        try:
            return {s.key: s.state for s in batch_states(self.instance, table=table)}
        finally:
            table.dispose()
