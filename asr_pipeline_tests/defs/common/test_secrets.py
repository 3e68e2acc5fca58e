"""A real password, used for real: a MariaDB user that needs it ingests every row, and the password is found
nowhere afterwards: not in what the commands print, the event log, metadata, run configs, tags, compute logs, or
any file the pipeline and Dagster wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.mysql, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]


def _asr_pipeline(*argv: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                             os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "asr_pipeline.cli", *argv], env=environment, capture_output=True,
                          text=True, timeout=900)


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


def test_a_real_password_is_used_and_found_nowhere(pipeline_env, monkeypatch, mysql_database, password_user):
    user, password = password_user
    url = sa.make_url(mysql_database).set(username=user, password=password)
    monkeypatch.setenv("ASR_DB_URL", url.render_as_string(hide_password=False))
    # the password is needed: without it the server refuses
    with pytest.raises(sa.exc.OperationalError, match="Access denied"):
        sa.create_engine(url.set(password="wrong")).connect()

    outputs = []
    for argv in (["ingest"], ["status"], ["status", "--json"], ["quarantine", "--json"]):
        result = _asr_pipeline(*argv)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    assert not [o for o in outputs if password in o]

    instance = dg.DagsterInstance.get()
    manifest = instance.get_latest_materialization_event(dg.AssetKey("raw_manifest")).asset_materialization
    assert manifest.metadata["rows"].value == 41  # every row was read through the password user
    assert f"{user}:***@" in manifest.metadata["source"].value

    runs = instance.get_runs()
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for run in runs:
        assert password not in json.dumps(run.run_config, default=str)
        assert password not in json.dumps(run.tags)
        for event in instance.all_logs(run.run_id):
            assert password not in dg.serialize_value(event), event.dagster_event_type
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    assert list(dagster_home.rglob("*.db")) or list(dagster_home.rglob("*.sqlite"))  # the event log was searched
    assert _files_holding(dagster_home, password.encode()) == []
    assert _files_holding(pipeline_env, password.encode()) == []
