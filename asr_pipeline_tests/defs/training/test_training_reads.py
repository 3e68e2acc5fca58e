"""Issue 11, point 4: nightly_retraining compares what the last training read, recorded when it started, with the
current featurized batches. A batch that lands while a training runs makes the next night's tick train again."""

import dagster as dg
import pytest

from asr_pipeline import cli
from asr_pipeline.core import training
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.training.schedules import batches_changed_since_training

pytestmark = pytest.mark.mysql
TINY_TRAINING = {"max_steps": 1, "batch_size": 4, "warmup_steps": 0, "eval_steps": 1, "generation_max_length": 8,
                 "max_eval_samples": 2}


def test_a_batch_featurized_while_training_runs_makes_the_next_nightly_tick_fire(pipeline_env, monkeypatch):
    monkeypatch.setenv("ASR_BATCH_ROWS", "21")
    cli.ingest.ingest()
    instance = cli._instance()
    defs = cli._definitions()
    schedule = defs.resolve_schedule_def("nightly_retraining")

    def tick():
        return schedule.evaluate_tick(dg.build_schedule_context(instance=instance))

    first, second = sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))
    real_train = training.train_whisper

    def train_while_a_batch_lands(*args, **kwargs):
        # the training has started (its reads are recorded) when the sensor's run re-featurizes a batch
        cli._run("asr_ingest", partition_key=second, defs=defs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train_whisper", train_while_a_batch_lands)
    cli._run("asr_train", training=TINY_TRAINING, defs=defs)
    monkeypatch.setattr(training, "train_whisper", real_train)

    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    landed = instance.get_latest_materialization_event(dg.AssetKey("featurized_shards"))
    assert landed.dagster_event.partition == second and landed.timestamp < checkpoint.timestamp
    read = checkpoint.asset_materialization.metadata["featurized_read"].value
    assert sorted(read) == [first, second]
    assert [key for key, _ in batches_changed_since_training(instance)] == [second]
    fired = tick()
    assert fired.run_requests, fired.skip_message
    assert f"batch {second} changed since the last checkpoint's training started" in \
        fired.run_requests[0].tags["asr/reason"]

    # the next training reads it, and then nothing is left to retrain for
    cli._run("asr_train", training=TINY_TRAINING, defs=defs)
    assert batches_changed_since_training(instance) == []
    assert "no featurized_shards batch changed" in tick().skip_message


def test_the_nightly_budget_is_the_users_steps_or_epochs(tmp_path, monkeypatch):
    from asr_pipeline.core.errors import ConfigError
    from asr_pipeline.definitions import build_definitions

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    key = "ids-0000000001-0000000010"
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [key])
    instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=key))
    for variable, value, config in [("ASR_RETRAIN_EPOCHS", "2.5", {"max_steps": None, "epochs": 2.5}),
                                    ("ASR_RETRAIN_MAX_STEPS", "300", {"max_steps": 300})]:
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            defs = build_definitions()
            request = defs.resolve_schedule_def("nightly_retraining").evaluate_tick(
                dg.build_schedule_context(instance=instance)).run_requests[0]
        assert request.run_config == {"ops": {"finetuned_checkpoint": {"config": config}}}
        assert dg.validate_run_config(defs.resolve_job_def("asr_retrain"), request.run_config)
    monkeypatch.setenv("ASR_RETRAIN_EPOCHS", "1")
    monkeypatch.setenv("ASR_RETRAIN_MAX_STEPS", "100")
    with pytest.raises(ConfigError, match="ASR_RETRAIN_MAX_STEPS and ASR_RETRAIN_EPOCHS"):
        build_definitions()
    monkeypatch.delenv("ASR_RETRAIN_MAX_STEPS")
    monkeypatch.setenv("ASR_RETRAIN_EPOCHS", "lots")
    with pytest.raises(ConfigError, match="ASR_RETRAIN_EPOCHS must be a positive number"):
        build_definitions()
