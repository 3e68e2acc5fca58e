"""Training options that contradict each other are refused when the command line is read, before `demo` speaks its
corpus, `run` ingests, or `train` opens anything."""

import pytest

from asr_pipeline import cli
from asr_pipeline.cli import ingest as cli_ingest
from asr_pipeline.cli import models as cli_models
from asr_pipeline.cli import parser as cli_parser
from asr_pipeline.cli import runs as cli_runs
from asr_pipeline.cli import status as cli_status
from asr_pipeline.cli import train as cli_train
from asr_pipeline.core import synth

CONTRADICTIONS = [
    (["--no-packing", "--packing-max-seconds", "20"], "with --no-packing there are none"),
    (["--max-steps", "5", "--epochs", "1"], "two ways to set the training budget"),
]


@pytest.fixture()
def nothing_may_run(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))  # should a check regress, nothing lands in a real home
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for module in (cli_ingest, cli_models, cli_parser, cli_runs, cli_status, cli_train):  # wherever they are bound
        for name in ("ingest", "_definitions", "_instance", "_run"):
            if callable(getattr(module, name, None)):
                monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(synth, "write_demo_corpus", forbidden)
    yield
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", ["train", "run", "demo"])
@pytest.mark.parametrize("options, message", CONTRADICTIONS)
def test_contradicting_training_options_are_refused_before_any_work(nothing_may_run, command, options, message):
    with pytest.raises(SystemExit, match=message):
        cli.main([command, *options])


def test_a_window_longer_than_whisper_input_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--packing-max-seconds", "31"])
    assert exit_.value.code == 2 and "between 1 and 30" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["run"], None),
    (["run", "--no-export"], {"export_ctranslate2": False}),
    (["run", "--export", "--float32"], {"export_ctranslate2": True, "bf16": False}),
    (["demo", "--no-export"], {**cli_train.DEMO_EVALUATION, "export_ctranslate2": False}),
])
def test_export_options_reach_the_evaluation_config(argv, expected, monkeypatch):
    """What `run` and `demo` hand to evaluation_report's config: nothing unless asked, export_ctranslate2 when
    --export/--no-export is given (the config field it sets is checked by Dagster when the run starts)."""
    args = cli_parser.build_parser().parse_args(argv)
    base = cli_train.DEMO_EVALUATION if argv[0] == "demo" else None
    assert cli_train._evaluation_overrides(args, base) == expected


def test_train_has_no_export_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--no-export"])
    assert "unrecognized arguments: --no-export" in capsys.readouterr().err
