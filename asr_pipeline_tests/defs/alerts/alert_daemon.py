"""The alert tests' shared parts: five rows whose audio has not arrived yet, and the asr_alerts sensor evaluated the
way the daemon does, at a time the test sets."""

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from asr_pipeline import cli
from asr_pipeline.defs.alerts.sensors import build_alert_sensor
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline_tests.conftest import create_notebook_table

HOUR, DAY = 3600.0, 86400.0
KEY = "ids-0000000001-0000000005"
UI = "http://dagster.example:3000"


@pytest.fixture()
def incoming(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir, no_alert_environment):
    """Five rows whose audio has not arrived yet: their directory is empty until `arrive()` fills it."""
    clips = korean_clips[:5]
    folder = tmp_path / "incoming"
    folder.mkdir()
    engine = create_notebook_table(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": "/cul_m01/incoming/" + Path(c["audio_path"]).name, "t": c["transcript"]} for c in clips])
    engine.dispose()
    for name, value in {"ASR_HOME": tmp_path / "home", "DAGSTER_HOME": tmp_path / "dagster",
                        "ASR_DB_URL": mysql_database, "ASR_PATH_MAP": f"/cul_m01/incoming/={folder}/",
                        "ASR_BASE_MODEL": tiny_model_dir, "ASR_SPLIT_RATIOS": "60/20/20", "ASR_UI_URL": UI}.items():
        monkeypatch.setenv(name, str(value))

    def arrive():
        for clip in clips:
            shutil.copy(clip["audio_path"], folder / Path(clip["audio_path"]).name)
    return arrive


class AlertDaemon:
    """Evaluates asr_alerts the way the daemon does, at the time `now` says; runs ingest batches for real."""

    def __init__(self):
        self.defs = cli._definitions()
        self.instance = cli._instance()
        self.now = time.time()
        self.sensor = build_alert_sensor(clock=lambda: self.now)
        self.instance.add_dynamic_partitions(INGEST_BATCHES.name, [KEY])

    def tick(self) -> str:
        with dg.build_sensor_context(instance=self.instance,
                                     resources={"settings": self.defs.resources["settings"]}) as context:
            return self.sensor(context).skip_message

    def ingest(self) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def("asr_ingest").execute_in_process(
            partition_key=KEY, instance=self.instance, raise_on_error=False)

    def check(self, name: str, asset: str):
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        return self.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]

    def everything_logged(self) -> str:
        runs = [r.run_id for r in self.instance.get_runs()]
        events = [str(e) for run_id in runs for e in self.instance.all_logs(run_id)]
        ledger = Path(self.defs.resources["settings"].home) / "alerts" / "ledger.json"
        return "\n".join(events) + ledger.read_text() + str(self.defs.resolve_sensor_def("asr_alerts").description)
