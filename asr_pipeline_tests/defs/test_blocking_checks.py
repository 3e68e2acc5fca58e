"""Every blocking check seen failing on real data, and what the failure does to the run: a NaN loss blocks
evaluation, features with the wrong number of mel bins block training, a shard that is not 16 kHz blocks
featurizing; a champion that cannot be compared is never replaced by a comparison it did not take part in."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from asr_pipeline import cli
from asr_pipeline.core import audio, champion
from asr_pipeline.defs.ingest import checks
from asr_pipeline.defs.training.checks import LOSS_FINITE

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

TINY_TRAINING = {"max_steps": 2, "batch_size": 4, "eval_steps": 2, "warmup_steps": 0}
SHORT_EVALUATION = {"max_new_tokens": 16, "export_ctranslate2": False, "bootstrap_resamples": 50}
TINY_RUN = ["run", "--max-steps", "2", "--batch-size", "4", "--eval-steps", "2", "--warmup-steps", "0"]
# Not promoting is a result, not a failure: the run is green, evaluation_report is materialized and only
# champion_model is held back (the CLI reports "not promoted").
NOT_PROMOTED_RUN_STATUS = dg.DagsterRunStatus.SUCCESS


def _check(instance, asset: str, name: str):
    """The latest evaluation of a check: (status, evaluation data or None)."""
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(asset), name)])
    record = records.get(dg.AssetCheckKey(dg.AssetKey(asset), name))
    assert record is not None, f"{asset}:{name} was never evaluated"
    evaluation = record.event.dagster_event.event_specific_data if record.event else None
    return record.status, evaluation


def _latest_run(instance, job: str) -> dg.DagsterRun:
    return instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)[0]


def _steps(instance, run: dg.DagsterRun) -> dict[str, str]:
    return {s.step_key: s.status.value for s in instance.get_run_step_stats(run.run_id)}


def _materialized(instance, asset: str) -> bool:
    return instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None


def _copy_model(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    for name, changes in config_changes.items():
        path = target / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return target


def test_a_shard_that_is_not_16k_blocks_featurizing(pipeline_env, monkeypatch):
    # a resampler regression: clips come out at 22.05 kHz (the demo's source rate) instead of 16 kHz
    monkeypatch.setattr(audio, "SAMPLE_RATE", 22_050)
    with pytest.raises(SystemExit, match="ingest failed for batches"):
        cli.main(["ingest"])
    instance = dg.DagsterInstance.get()
    status, evaluation = _check(instance, "resampled_dataset", checks.CLIPS_16K)
    assert status.value == "FAILED" and evaluation.passed is False
    assert evaluation.metadata["sample_rate"].value == 22_050
    run = _latest_run(instance, "asr_ingest")
    assert run.status == dg.DagsterRunStatus.FAILURE
    steps = _steps(instance, run)
    assert steps["resampled_dataset"] == "FAILURE" and steps.get("featurized_shards") in (None, "SKIPPED")
    assert not _materialized(instance, "featurized_shards")
    assert not (pipeline_env / "storage" / "featurized_shards").exists()


def test_features_with_the_wrong_number_of_mel_bins_block_training(pipeline_env, monkeypatch, tiny_model_dir,
                                                                   tmp_path):
    # A base model whose processor was saved from another Whisper (128 mel bins; the model takes 80), and a
    # featurizer regression: the processor is used as saved, without load_featurizer's correction to the model's
    # mel bins. The check is what stands between such features and the training.
    from transformers import WhisperProcessor

    from asr_pipeline.defs.ingest import assets

    mels = json.loads((tiny_model_dir / "config.json").read_text())["num_mel_bins"]
    mismatched = _copy_model(tiny_model_dir, tmp_path / "mismatched")
    processor_config = mismatched / "processor_config.json"  # transformers 5: the feature extractor is nested here
    saved = json.loads(processor_config.read_text())
    saved["feature_extractor"]["feature_size"] = 128
    processor_config.write_text(json.dumps(saved))
    monkeypatch.setenv("ASR_BASE_MODEL", str(mismatched))
    def processor_as_saved(source):
        processor = WhisperProcessor.from_pretrained(source)
        return processor.feature_extractor, processor.tokenizer

    monkeypatch.setattr(assets, "load_featurizer", processor_as_saved)
    with pytest.raises(SystemExit, match="ingest failed for batches"):
        cli.main(TINY_RUN)
    instance = dg.DagsterInstance.get()
    status, evaluation = _check(instance, "featurized_shards", checks.FEATURE_SHAPES)
    assert status.value == "FAILED" and evaluation.passed is False
    assert evaluation.description == f"128 mel bins stored, model expects {mels}"
    assert _latest_run(instance, "asr_ingest").status == dg.DagsterRunStatus.FAILURE
    assert not instance.get_runs(filters=dg.RunsFilter(job_name="asr_retrain"))  # training never started
    assert not _materialized(instance, "finetuned_checkpoint")
    assert not (pipeline_env / "storage" / "finetuned_checkpoint").exists()


def _nan_model(source: Path, target: Path) -> Path:
    """A base model with one NaN weight (a corrupted download, a bad conversion): every logit, hence the loss,
    is NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    name = next(k for k in weights if k.endswith("decoder.layer_norm.weight"))
    weights[name][0] = float("nan")
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_a_nan_loss_blocks_evaluation(pipeline_env, monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("ASR_BASE_MODEL", str(_nan_model(tiny_model_dir, tmp_path / "nan_model")))
    cli.main(["ingest"])
    # the CLI's own path for `run`, with a short decoding budget: a NaN model never emits end-of-text
    with pytest.raises(SystemExit, match="of asr_retrain failed"):
        cli._run("asr_retrain", training={**TINY_TRAINING, "generation_max_length": 4, "max_eval_samples": 2})
    instance = dg.DagsterInstance.get()
    assert _latest_run(instance, "asr_ingest").status == dg.DagsterRunStatus.SUCCESS  # features need no weights
    status, evaluation = _check(instance, "finetuned_checkpoint", LOSS_FINITE)
    assert status.value == "FAILED" and evaluation.passed is False
    assert evaluation.metadata["non_finite"].value >= 1
    run = _latest_run(instance, "asr_retrain")
    assert run.status == dg.DagsterRunStatus.FAILURE
    steps = _steps(instance, run)
    assert steps["finetuned_checkpoint"] == "FAILURE"
    assert steps.get("evaluation_report") in (None, "SKIPPED") and steps.get("champion_model") in (None, "SKIPPED")
    for asset in ("finetuned_checkpoint", "evaluation_report", "champion_model"):
        assert not _materialized(instance, asset), asset
    storage = pipeline_env / "storage"
    assert not (storage / "finetuned_checkpoint").exists() and not (storage / "evaluation_report").exists()
    assert champion.current_champion(pipeline_env) is None


def test_a_champion_that_cannot_be_compared_is_kept_and_the_challenger_is_not_promoted(pipeline_env, tiny_model_dir,
                                                                                       tmp_path, capsys):
    # the model in service came from another base model (128 mel bins): it cannot be decoded on these features
    other = _copy_model(tiny_model_dir, tmp_path / "other_base", config={"num_mel_bins": 128})
    incumbent = champion.promote(pipeline_env, other, None, {"finetuned": {"cer": 0.5, "cer_normalized": 0.5,
                                                                             "wer": 0.9}, "test_rows": 10})
    pointer = champion.champion_dir(pipeline_env) / "champion.json"
    before = pointer.read_bytes()

    cli.main(["ingest"])
    cli._run("asr_retrain", training={**TINY_TRAINING, "generation_max_length": 16, "max_eval_samples": 4},
             evaluation=SHORT_EVALUATION)  # what `run` does after its ingest, with a short decoding budget
    report = json.loads((pipeline_env / "storage" / "evaluation_report" / "report.json").read_text())
    decision = report["promotion"]
    assert decision["promote"] is False
    assert "cannot be compared" in decision["reason"] and "champion --retire" in decision["reason"]
    assert "champion" not in report  # it was not decoded on features it cannot take
    assert report["champion_model"] == incumbent["model_path"]
    assert "not promoted" in capsys.readouterr().out
    assert pointer.read_bytes() == before and len(champion.promotion_history(pipeline_env)) == 1

    instance = dg.DagsterInstance.get()
    run = _latest_run(instance, "asr_retrain")
    assert run.status == NOT_PROMOTED_RUN_STATUS
    assert not _materialized(instance, "champion_model")  # held back, however the run expresses it
