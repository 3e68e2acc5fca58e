"""The whole graph, materialized for real: MariaDB rows with NAS-style paths -> evaluation report, on a tiny Whisper."""

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import jiwer
import pytest
import sqlalchemy as sa
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from asr_pipeline import cli
from asr_pipeline.core import champion as champion_core
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.storage import publish, staging_dir

pytestmark = [pytest.mark.mysql, pytest.mark.slow]


def test_cli_run_materializes_every_asset_and_writes_a_consistent_report(pipeline_env, korean_clips, capsys):
    cli.main(["run", "--max-steps", "6", "--batch-size", "4", "--eval-steps", "3", "--warmup-steps", "1"])
    storage = pipeline_env / "storage"

    report = json.loads((storage / "evaluation_report" / "report.json").read_text())
    batches = sorted((storage / "featurized_shards").glob("ids-*"))
    assert [b.name for b in batches] == [f"ids-0000000001-{len(korean_clips) + 1:010d}"]  # one batch of every row
    shard = FeatureShard(batches[0])
    test_rows = shard.index[shard.index["split"] == "test"]
    assert report["test_rows"] == len(test_rows) > 0
    utterances = report["per_utterance"]
    assert {u["id"] for u in utterances} == set(test_rows["id"])
    assert set(utterances[0]) >= {"id", "audio_path", "reference", "base_hypothesis", "finetuned_hypothesis",
                                  "duration"}
    refs = [u["reference"] for u in utterances]
    for name in ("base", "finetuned"):
        hyps = [u[f"{name}_hypothesis"] for u in utterances]
        assert report[name]["cer"] == pytest.approx(jiwer.cer(refs, hyps))
        assert report[name]["wer"] == pytest.approx(jiwer.wer(refs, hyps))
        assert {"cer", "cer_normalized", "wer"} <= set(report[name])
    assert (storage / "evaluation_report" / "report.md").read_text().startswith("# Evaluation report")
    for name in ("base", "finetuned", "ctranslate2"):
        lo, hi = report[name]["cer_ci95"]
        assert lo <= report[name]["cer"] <= hi
    html = Path(report["html_path"]).read_text()
    assert Path(report["html_path"]).parent == storage / "evaluation_report"
    assert "data:image/png;base64," in html and "<table>" in html and "src=\"http" not in html  # self-contained
    assert sum(b["utterances"] for b in report["by_duration"]) == report["test_rows"]
    assert {b["bucket"] for b in report["by_programme"]} == {"DEMO"}
    assert len(report["worst"]) == min(20, report["test_rows"])
    assert [p["step"] for p in report["training_curves"]["eval"]] == [3, 6]  # eval every 3 of 6 steps
    from asr_pipeline.core.model import cpu_has_native_bf16
    assert report["decoding"]["dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    export = report["ctranslate2"]
    assert Path(export["path"], "model.bin").exists() and export["utterances_per_s"] > 0

    # with no champion the base model is the incumbent: a fine-tune that does not beat it is not promoted, and that
    # is a result, not a failure (the run succeeds; champion_model materializes nothing)
    promotion = report["promotion"]
    assert not promotion["promote"] and promotion["incumbent"] == "base" and promotion["rule"] == "significant"
    assert promotion["blocked_by"] == ["not_better"] and len(promotion["difference_ci95"]) == 2
    assert promotion["difference"] == pytest.approx(report["finetuned"]["cer_normalized"]
                                                    - report["base"]["cer_normalized"])
    assert report["comparisons"]["finetuned_vs_base"]["unit"] == "episode"
    assert set(report["finetuned"]["hallucination"]) >= {"insertion_rate", "cer_above_1", "repetition", "empty"}
    assert "succeeded: the challenger was evaluated but not promoted" in capsys.readouterr().out
    cli.main(["champion", "--json"])
    assert json.loads(capsys.readouterr().out) is None

    # the missing file was quarantined, not fatal; every real clip made it through
    resampled = storage / "resampled_dataset" / batches[0].name
    import pandas as pd
    quarantine = pd.read_parquet(resampled / "quarantine.parquet")
    assert quarantine["reason"].tolist() == ["missing audio file"]
    assert len(pd.read_parquet(resampled / "index.parquet")) == len(korean_clips)

    # the checkpoint loads the documented way, with its generation settings
    checkpoint = storage / "finetuned_checkpoint"
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint)
    processor = WhisperProcessor.from_pretrained(checkpoint)
    assert model.generation_config.language == "korean" and model.generation_config.task == "transcribe"
    assert processor.feature_extractor.feature_size == model.config.num_mel_bins
    assert list((checkpoint / "tensorboard").rglob("events.out.tfevents.*"))
    summary = json.loads((checkpoint / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["valid_cer_history"]
    assert summary["partitions"] == [batches[0].name]

    # the run is in the Dagster instance with the report table as metadata
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report"))
    metadata = event.asset_materialization.metadata
    assert "| model | CER [95% CI] |" in metadata["report"].value
    assert "data:image/png;base64," in metadata["report"].value  # the training curves, shown in the UI
    assert metadata["finetuned_cer"].value == pytest.approx(report["finetuned"]["cer"])
    assert metadata["html_path"].value == report["html_path"]
    assert metadata["promote"].value is False and metadata["promotion_blocked_by"].value == ["not_better"]
    assert instance.get_latest_materialization_event(dg.AssetKey("champion_model")) is None
    runs = instance.get_runs(dg.RunsFilter(job_name="asr_retrain"))
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]  # green: nothing for a run retry to repeat
    manifest_event = instance.get_latest_materialization_event(dg.AssetKey("raw_manifest"))
    assert manifest_event.asset_materialization.metadata["rows"].value == len(korean_clips) + 1

    capsys.readouterr()
    cli.main(["status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert status["assets"]["featurized_shards"]["rows"] == len(korean_clips)
    assert status["assets"]["raw_manifest"]["rows"] == len(korean_clips) + 1
    assert all(status["assets"][name]["bytes"] > 0 for name in status["assets"])
    assert status["latest_checkpoint"] == str(checkpoint)
    assert status["latest_report"]["finetuned_cer"] == pytest.approx(report["finetuned"]["cer"])

    cli.main(["report", "--json"])
    assert json.loads(capsys.readouterr().out)["test_rows"] == report["test_rows"]

    cli.main(["transcribe", korean_clips[0]["audio_path"]])
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith(korean_clips[0]["audio_path"] + "\t")
    assert "no champion yet; using the latest fine-tuned checkpoint" in captured.err

    # evaluating again: the same answer, again a successful run; the check records the decision as a warning
    cli.main(["run", "--max-steps", "6", "--batch-size", "4", "--eval-steps", "3", "--warmup-steps", "1"])
    assert "not promoted" in capsys.readouterr().out
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("evaluation_report"), "challenger_beats_champion")])
    execution = list(check.values())[0]
    assert execution.status.value == "FAILED"
    assert execution.event.dagster_event.asset_check_evaluation_data.severity == dg.AssetCheckSeverity.WARN
    assert [r.status for r in instance.get_runs(dg.RunsFilter(job_name="asr_retrain"))] == \
        [dg.DagsterRunStatus.SUCCESS] * 2
    cli.main(["champion", "--history", "--json"])
    assert json.loads(capsys.readouterr().out) == []


def test_train_alone_reuses_stored_features(pipeline_env):
    cli.main(["ingest"])
    cli.main(["train", "--max-steps", "2", "--batch-size", "2", "--eval-steps", "2", "--warmup-steps", "0"])
    summary = json.loads((pipeline_env / "storage" / "finetuned_checkpoint" / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["settings"]["batch_size"] == 2
    assert not (pipeline_env / "storage" / "evaluation_report").exists()


def test_a_bad_setting_fails_with_the_variable_name(pipeline_env, monkeypatch):
    monkeypatch.setenv("ASR_SPLIT_RATIOS", "90/10")
    with pytest.raises(SystemExit, match="ASR_SPLIT_RATIOS"):
        cli.main(["ingest"])
    monkeypatch.setenv("ASR_SPLIT_RATIOS", "80/10/10")
    monkeypatch.setenv("ASR_DB_TABLE", "training_datas; DROP TABLE training_datas")
    with pytest.raises(SystemExit, match="ASR_DB_TABLE"):
        cli.main(["ingest"])


def test_database_password_is_not_shown_in_metadata(pipeline_env, monkeypatch, mysql_server_url):
    secret = "hunter2-" + "secret"  # a made-up password, built so it reads as none
    url = sa.make_url(mysql_server_url).set(password=secret, port=1)
    monkeypatch.setenv("ASR_DB_URL", url.render_as_string(hide_password=False))
    from asr_pipeline.definitions import build_definitions
    defs = build_definitions()
    database = defs.resources["database"]
    assert "hunter2-secret" not in database.describe()
    with pytest.raises(SystemExit) as failure:
        cli.main(["ingest"])
    assert "hunter2-secret" not in str(failure.value)


def test_a_failed_blocking_check_stops_featurization(pipeline_env, monkeypatch, capsys):
    monkeypatch.setenv("ASR_MAX_QUARANTINE_RATE", "0.0")  # the one missing file is already too many
    with pytest.raises(SystemExit, match="failed"):
        cli.main(["ingest"])
    storage = pipeline_env / "storage"
    assert (storage / "resampled_dataset").is_dir() and not (storage / "featurized_shards").exists()
    instance = dg.DagsterInstance.get()
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("resampled_dataset"), "quarantine_rate_below_threshold")])
    evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
    assert evaluation.passed is False
    capsys.readouterr()
    cli.main(["quarantine", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["reason"], r["stage"]) for r in rows] == [("missing audio file", "resampled_dataset")]
    assert set(rows[0]) >= {"id", "audio_path", "reason"}


def test_backfill_reprocesses_registered_batches(pipeline_env, monkeypatch, capsys):
    monkeypatch.setenv("ASR_BATCH_ROWS", "15")  # 41 rows: 15 + 15 + 11 (the last holds the one missing file)
    cli.main(["ingest"])
    keys = sorted(p.name for p in (pipeline_env / "storage" / "featurized_shards").glob("ids-*"))
    assert keys == ["ids-0000000001-0000000015", "ids-0000000016-0000000030", "ids-0000000031-0000000041"]
    instance = dg.DagsterInstance.get()

    def materializations(key):
        return len(instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("featurized_shards"), asset_partitions=[key]), 10).records)

    cli.main(["backfill", "--from", keys[1], "--to", keys[2]])
    assert [materializations(k) for k in keys] == [1, 2, 2]
    cli.main(["backfill", keys[0]])
    assert materializations(keys[0]) == 2
    with pytest.raises(SystemExit, match="not registered"):
        cli.main(["backfill", "ids-0000009999-0000010000"])
    capsys.readouterr()
    cli.main(["status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert [p["key"] for p in status["partitions"]] == keys
    assert status["assets"]["featurized_shards"]["partitions"] == 3


def test_a_better_challenger_replaces_the_champion_and_the_history_grows(pipeline_env, korean_clips, capsys,
                                                                       tiny_model_dir, monkeypatch, tmp_path):
    def champion() -> dict:
        capsys.readouterr()
        cli.main(["champion", "--json"])
        return json.loads(capsys.readouterr().out)

    def babble(model_dir: Path) -> str:
        """Spoil a model for certain: it may emit neither end-of-text nor any other special token (Whisper's come
        after the text vocabulary), so it babbles text to the end of its token budget on every utterance. Returns
        the generation config it had."""
        generation = model_dir / "generation_config.json"
        original = generation.read_text()
        config = json.loads(original)
        vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        generation.write_text(json.dumps({**config, "suppress_tokens": list(range(config["eos_token_id"],
                                                                                    vocab_size))}))
        return original

    # (A tiny random Whisper cannot be trained to a reliably better CER in a test's time, so better models are made
    # by spoiling the ones they are compared with. The test split holds one episode, too few for an interval:
    # these promotions are decided on the point estimate.)
    monkeypatch.setenv("ASR_PROMOTION_RULE", "point")
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    monkeypatch.setenv("ASR_BASE_MODEL", str(base))
    run = ["run", "--max-steps", "2", "--batch-size", "4", "--eval-steps", "2", "--warmup-steps", "0"]
    cli.main(["ingest"])
    cli.main(["train", *run[1:]])
    # no champion yet: the incumbent is the base model the checkpoint started from, here spoiled after training
    original = babble(base)

    def tidying_fails(*args, **kwargs):  # removing older copies comes after the promotion and never undoes it
        raise PermissionError("models/ is read-only here")

    real_prune = champion_core.prune_models
    monkeypatch.setattr(champion_core, "prune_models", tidying_fails)
    cli._run("asr_evaluate")  # raises SystemExit if any step failed
    monkeypatch.setattr(champion_core, "prune_models", real_prune)
    report = json.loads((pipeline_env / "storage" / "evaluation_report" / "report.json").read_text())
    assert report["promotion"]["promote"] and report["promotion"]["incumbent"] == "base", report["promotion"]
    assert report["base"]["hallucination"]["cer_above_1"] == 1.0  # the babbling model's hallucinations counted
    first = champion()
    (base / "generation_config.json").write_text(original)
    # now make the champion in service worse than any new checkpoint
    babble(Path(first["model_path"]))
    # a champion of last year, promoted and replaced long ago: with ASR_CHAMPION_KEEP=1 the promotion below removes
    # its copy, and keeps the champion it replaces (an evaluation may still be decoding it)
    ancient = pipeline_env / "champion" / "models" / "20251101T020000-0123abcd"
    staged = staging_dir(ancient)
    shutil.copytree(Path(first["model_path"]), staged / "model")
    publish(staged, ancient)
    history_file = pipeline_env / "champion" / "history.jsonl"
    history_file.write_text(json.dumps({**first, "model_path": str(ancient / "model"),
                                        "promoted_at": "2025-11-01T02:00:00+00:00"}) + "\n" + history_file.read_text())
    monkeypatch.setenv("ASR_CHAMPION_KEEP", "1")

    cli.main(run)
    report = json.loads((pipeline_env / "storage" / "evaluation_report" / "report.json").read_text())
    assert report["champion_model"] == first["model_path"]
    assert report["champion"]["cer"] > 1.0  # insertions: the spoiled champion was decoded, on the same split
    assert report["promotion"]["promote"], report["promotion"]
    second = champion()
    assert second["model_path"] != first["model_path"] and second["previous_model_path"] == first["model_path"]
    assert second["test_cer"] == pytest.approx(report["finetuned"]["cer"])
    capsys.readouterr()
    cli.main(["champion", "--history", "--json"])
    history = json.loads(capsys.readouterr().out)
    assert [h["model_path"] for h in history] == [str(ancient / "model"), first["model_path"], second["model_path"],
                                                  str(ancient / "model")]
    assert history[-1]["reason"] == "older than the latest promotion (ASR_CHAMPION_KEEP=1)"
    assert not os.path.lexists(ancient) and Path(first["model_path"]).is_dir() and Path(second["model_path"]).is_dir()
    cli.main(["status", "--json"])
    copies = json.loads(capsys.readouterr().out)["champion_copies"]
    assert copies["count"] == 2 and copies["keep"] == 1 and copies["bytes"] > 0
    cli.main(["transcribe", korean_clips[0]["audio_path"]])
    assert f"using the champion {second['model_path']}" in capsys.readouterr().err
