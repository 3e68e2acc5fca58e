"""A console command's start-up runs with the garbage collector paused, and the pause ends when the Dagster instance
opens, before any run: a command that never reached the instance would run its whole job uncollected."""

import gc
import sys

import pytest

from asr_pipeline.cli import ingest as cli_ingest
from asr_pipeline.cli import models as cli_models
from asr_pipeline.cli import parser as cli_parser
from asr_pipeline.cli import runs as cli_runs
from asr_pipeline.cli import status as cli_status
from asr_pipeline.cli import train as cli_train


class InstanceReached(Exception):
    pass


# an argument list for every command the console starts with the collector paused
PAUSED_COMMANDS = {"ingest": ["ingest"], "ingest-batch": ["ingest-batch", "ids-0000000001-0000000010"],
                   "backfill": ["backfill", "--all"], "train": ["train"], "run": ["run"], "status": ["status", "--json"]}


@pytest.fixture()
def collector_restored():
    """The collector as it was before the test: on or off, with nothing more frozen than before."""
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    yield
    cli_runs._startup_gc_paused = False
    if gc.get_freeze_count() != frozen:
        gc.unfreeze()  # what the test froze (and anything frozen before it) goes back to the oldest generation
    (gc.enable if enabled else gc.disable)()


@pytest.fixture()
def instance_stops_the_command(monkeypatch, tmp_path, collector_restored):
    """_instance() records whether the collector was paused when the command reached it, ends the pause as the real
    one does, and stops the command there (nothing runs, nothing is written)."""
    seen = []

    def instance():
        seen.append(gc.isenabled())
        cli_runs.end_startup_gc_pause()
        raise InstanceReached

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for module in (cli_ingest, cli_models, cli_parser, cli_runs, cli_status, cli_train):  # wherever it is bound
        if callable(getattr(module, "_instance", None)):
            monkeypatch.setattr(module, "_instance", instance)
    return seen


def test_every_paused_command_is_tested_here():
    assert set(PAUSED_COMMANDS) == cli_parser.GC_PAUSED_UNTIL_INSTANCE


@pytest.mark.parametrize("command", sorted(PAUSED_COMMANDS))
def test_console_commands_reach_the_instance_paused_and_leave_it_collecting(instance_stops_the_command, monkeypatch,
                                                                              command):
    monkeypatch.setattr(sys, "argv", ["asr-pipeline", *PAUSED_COMMANDS[command]])
    with pytest.raises(InstanceReached):
        cli_parser.main()  # argv None: the console script's own command line
    assert instance_stops_the_command == [False], "start-up was not paused, or the instance was opened twice"
    assert gc.isenabled()


def test_in_process_callers_keep_their_collector(instance_stops_the_command):
    with pytest.raises(InstanceReached):
        cli_parser.main(["status", "--json"])
    assert instance_stops_the_command == [True]


def test_opening_the_instance_ends_the_pause_and_freezes_what_start_up_made(monkeypatch, tmp_path,
                                                                           collector_restored):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    cli_runs.pause_gc_for_startup()
    assert not gc.isenabled()
    cli_runs._instance().dispose()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_a_collector_the_caller_disabled_stays_disabled(monkeypatch, tmp_path, collector_restored):
    gc.disable()
    cli_runs.pause_gc_for_startup()  # not ours to end: the caller turned it off
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    cli_runs._instance().dispose()
    assert not gc.isenabled()
