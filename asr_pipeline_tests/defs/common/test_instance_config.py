"""The instance's dagster.yaml and directory (asr_pipeline/cli/runs.py, defs/common/event_log.py): an instance is
never split over two directories, a "~" is expanded, moved artifacts are fine, and the files earlier versions wrote
are brought up to date or left as edited."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from asr_pipeline.cli import runs
from asr_pipeline.defs.common.event_log import PooledSqliteEventLogStorage

from asr_pipeline_tests.defs.common.event_log_runs import artifacts_in, earlier_configs, materialize, open_instance


def test_an_instance_is_never_split_over_two_directories(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    open_instance(elsewhere, monkeypatch)
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(runs.INSTANCE_CONFIG)
    with pytest.raises(dg.DagsterInvariantViolationError, match=f"set DAGSTER_HOME to {home}"):
        dg.DagsterInstance.from_config(str(home))  # DAGSTER_HOME still names `elsewhere`: refused as it opens
    assert not list((elsewhere / "history" / "runs").glob("*-*.db"))
    # its artifacts moved by an edited dagster.yaml, the instance's directory cannot be told as it opens: refused at
    # its first use, and every one after
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "dagster.yaml").write_text(runs.INSTANCE_CONFIG + artifacts_in(tmp_path / "moved_art"))
    split = dg.DagsterInstance.from_config(str(moved))
    for _ in range(2):
        with pytest.raises(dg.DagsterInvariantViolationError, match=f"set DAGSTER_HOME to {moved}"):
            materialize(split)
    assert not list((elsewhere / "history" / "runs").glob("*-*.db"))  # no run's events went there
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (run_id,) = materialize(dg.DagsterInstance.from_config(str(home)))
    assert (home / "history" / "runs" / f"{run_id}.db").exists()

    # a "~" left unexpanded (an env file, a systemd unit): the same instance, in the home directory
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("DAGSTER_HOME", "~/dagster")
    (run_id,) = materialize(runs._instance())
    assert (tmp_path / "user" / "dagster" / "history" / "runs" / f"{run_id}.db").exists()
    assert os.environ["DAGSTER_HOME"] == str(tmp_path / "user" / "dagster")

    # artifacts kept elsewhere by an edited dagster.yaml: the runs and the event log still share the instance
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "dagster.yaml").write_text(runs.INSTANCE_CONFIG + artifacts_in(tmp_path / "art"))
    (run_id,) = materialize(open_instance(edited, monkeypatch))
    assert (edited / "history" / "runs" / f"{run_id}.db").exists()


def test_a_dagster_yaml_an_earlier_version_wrote_is_brought_up_to_date_and_an_edited_one_left(tmp_path):
    for number, earlier in enumerate(earlier_configs()):
        written = tmp_path / f"written{number}" / "dagster.yaml"
        written.parent.mkdir()
        written.write_text(earlier)
        runs.write_instance_config(written)
        assert written.read_text() == runs.INSTANCE_CONFIG

    edited = tmp_path / "edited" / "dagster.yaml"
    edited.parent.mkdir()
    edited.write_text(earlier_configs()[0] + "run_monitoring:\n  enabled: true\n")
    runs.write_instance_config(edited)
    assert "PooledSqliteEventLogStorage" not in edited.read_text()
    assert not list(tmp_path.rglob(".dagster.yaml.*"))


@pytest.mark.parametrize("config", [runs.INSTANCE_CONFIG, *earlier_configs()])
def test_an_instance_written_by_any_version_opens(tmp_path, monkeypatch, config):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(config)
    instance = open_instance(home, monkeypatch)
    (run_id,) = materialize(instance)
    assert instance.get_run_by_id(run_id).is_success
    assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
