"""README.md is executable truth: every `asr-pipeline …` and `make …` command it shows is parsed by the real CLI
(and the Makefile), and the short ones run end to end after a real `make demo`.

Commands are found wherever README shows them (fenced code blocks, inline code, the command table), so a line
added to README is covered without anyone listing it here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from asr_pipeline.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# Values for the placeholders the command table uses; `KEY`, `FILE` and `DIR` get real values end to end.
PLACEHOLDERS = {"N": "2", "B": "4", "LR": "0.001", "KEY": "ids-0000000001-0000010000", "FILE": "clip.wav",
                "DIR": "model", "H": "127.0.0.1", "P": "3000"}
# Subcommands quick enough to run end to end against the demo's ASR_HOME (`demo` itself runs through `make demo`;
# `run` and `train` train a model, `ui` serves until stopped, so those are parsed only).
DEMO_ROWS = 40
DEMO_ARGS = f"--rows {DEMO_ROWS} --max-steps 20 --eval-steps 10 --batch-size 4"
RUN_END_TO_END = {"status", "quarantine", "report", "champion", "backfill", "ingest", "transcribe"}


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # after `asr-pipeline` (or `make`)
    where: str              # README line, for the failure message


def _fenced_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    code, prose, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return code, prose


def _without_comment(line: str) -> str:
    return re.split(r"\s#", line, maxsplit=1)[0]


def _commands_in(text: str, where: str, program: str) -> list[Command]:
    """`program args…` in a shell line: environment assignments and a path before the program are allowed; the bare
    program name or `program …` (prose that names it) is not a command."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        return []
    found = []
    for i, token in enumerate(tokens):
        if Path(token).name == program and all("=" in t for t in tokens[:i]) and \
                tokens[i + 1:] and tokens[i + 1] not in ("…", "..."):
            found.append(Command(tuple(tokens[i + 1:]), where))
            break
    return found


def readme_commands(program: str, text: str | None = None) -> list[Command]:
    """Every `program …` README shows in a code block or as inline code (table command cells are separate)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    code, prose = _fenced_and_prose(text)
    commands = []
    for number, line in code:
        commands += _commands_in(_without_comment(line), f"README.md:{number}: {line.strip()}", program)
    for number, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            commands += _commands_in(span, f"README.md:{number}: `{span}`", program)
    return commands


def command_table(text: str | None = None) -> list[tuple[str, str]]:
    """(spec, README line) for each row of the table under "## Command line", e.g. `backfill [KEY...] [--all]`."""
    text = README.read_text(encoding="utf-8") if text is None else text
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    start = text.index(section)
    rows = []
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if match:
            number = text[:start + section.index(line)].count("\n") + 1
            rows.append((match.group(1), f"README.md:{number}: `{match.group(1)}`"))
    return rows


def _fill(token: str, values: dict[str, str]) -> list[str]:
    name = token.rstrip(".")
    if name.isupper():
        return [values.get(name, "1")]
    return [token]


def table_invocations(values: dict[str, str] = PLACEHOLDERS) -> list[Command]:
    """For each table row: the bare command, the command with each documented option alone, and with all of them
    (`[same options]` stands for the previous row's options)."""
    invocations, previous_options = [], []
    for spec, where in command_table():
        required, options = [], []
        for part in re.findall(r"\[[^\]]*\]|\S+", spec):
            if part.startswith("["):
                inner = part[1:-1].split()
                options += previous_options if inner == ["same", "options"] else \
                    [[word for token in inner for word in _fill(token, values)]]
            else:
                required += _fill(part, values)
        previous_options = options
        invocations.append(Command(tuple(required), where))
        invocations += [Command(tuple(required + option), where) for option in options]
        if len(options) > 1:
            invocations.append(Command(tuple(required + [w for option in options for w in option]), where))
    return invocations


def _parses(command: Command) -> str | None:
    """None when the real parser accepts it, else what argparse said."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(list(command.argv))
    except SystemExit as exit_:
        return f"{command.where}: `asr-pipeline {' '.join(command.argv)}` exits {exit_.code}: {stderr.getvalue()}"
    return None


def test_readme_shows_commands_where_this_test_looks():
    shown = {c.argv[0] for c in readme_commands("asr-pipeline") if c.argv}
    assert {"run", "backfill", "ui"} <= shown
    assert {"demo", "test", "ui"} <= {c.argv[0] for c in readme_commands("make") if c.argv}
    assert len(command_table()) >= 10


def test_every_asr_pipeline_command_in_readme_parses():
    failures = [problem for command in readme_commands("asr-pipeline") + table_invocations()
                if (problem := _parses(command))]
    assert not failures, "\n".join(failures)


def test_every_cli_command_and_option_is_in_readme():
    """The other direction: nothing the CLI offers is undocumented."""
    text = README.read_text(encoding="utf-8")
    table = {spec.split()[0] for spec, _ in command_table()}
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, sub in subparsers.choices.items():
        if name not in table and f"`{name} " not in text:
            missing.append(name)
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and not re.search(rf"{re.escape(option)}\b", text):
                    missing.append(f"{name} {option}")
    assert not missing, f"in the CLI but not in README.md: {missing}"


def _make_targets() -> list[Command]:
    return [Command(tuple(t for t in c.argv if "=" not in t and not t.startswith("-")), c.where)
            for c in readme_commands("make")]


def test_every_make_target_in_readme_exists():
    failures = []
    for command in _make_targets():
        result = subprocess.run(["make", "-n", *command.argv], cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{command.where}: make -n {' '.join(command.argv)}: {result.stderr.strip()}")
    assert not failures, "\n".join(failures)


# --- end to end ------------------------------------------------------------------------------------------------

def _copy_of_the_project(destination: Path) -> Path:
    """A fresh copy of the working tree (tracked and new files, nothing ignored): no .venv, no .asr_home."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory):
    """`make demo` in a fresh copy of the project, run as a newcomer would (no ASR_* settings but a shared
    database URL the demo must leave alone). The venv running these tests stands in for `.venv`: `make test`
    (and .ci/run) have just installed it, so the install step is not repeated (`make -o STAMP`)."""
    project = _copy_of_the_project(tmp_path_factory.mktemp("fresh_clone"))
    venv = Path(sys.prefix)
    stamp = venv / ".installed-stamp"
    shared_db = tmp_path_factory.mktemp("shared") / "production.sqlite"
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("ASR_", "DAGSTER_")) or name.startswith("ASR_TEST_")}
    environment.update({"PYTHONPATH": str(project), "ASR_DB_URL": f"sqlite:///{shared_db}", "HF_HUB_OFFLINE": "1"})
    # DEMO_ARGS: a smaller corpus and fewer steps than the newcomer's default, the same code path
    result = subprocess.run(["make", "-o", str(stamp), "demo", f"VENV={venv}", f"DEMO_ARGS={DEMO_ARGS}"],
                            cwd=project, env=environment, capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    del environment["ASR_DB_URL"]
    return {"path": project, "output": output, "env": environment, "bin": venv / "bin", "shared_db": shared_db}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_make_demo_runs_the_whole_graph_on_the_embedded_database_and_says_the_model_is_a_placeholder(demo_project):
    from asr_pipeline.core.placeholder_model import PLACEHOLDER_WARNING

    home = demo_project["path"] / ".asr_home"
    output = demo_project["output"]
    # the embedded SQLite default: 120 rows, and the configured database is never touched
    assert "ignoring ASR_DB_URL and using the embedded SQLite database" in output
    assert not demo_project["shared_db"].exists()
    import sqlalchemy as sa
    engine = sa.create_engine(f"sqlite:///{home / 'transcripts.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM training_datas")).scalar() == DEMO_ROWS
    engine.dispose()
    # the placeholder model is announced loudly, in the output and in every form of the report
    assert f"*** {PLACEHOLDER_WARNING} ***" in output
    report_dir = home / "storage" / "evaluation_report"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["warning"] == PLACEHOLDER_WARNING
    assert PLACEHOLDER_WARNING in (report_dir / "report.md").read_text()
    assert "BASE MODEL IS A PLACEHOLDER" in (report_dir / "report.html").read_text()
    # what README says the demo prints: the table, the decision, where the report lies, how to open the UI
    assert "| model |" in output  # the decision follows the table; the placeholder's depends on its random weights
    assert re.search(r"^(promoted to champion|not promoted): ", output, re.M), output[-2000:]
    assert str(report_dir / "report.html") in output and "make ui" in output
    assert (home / "dagster" / "dagster.yaml").exists()


def _features(argv: tuple[str, ...]) -> set[tuple[str, str]]:
    """What an invocation exercises: its options, whether it names positional arguments, or that it is bare."""
    options = {a for a in argv[1:] if a.startswith("-")}
    positional = any(not a.startswith("-") and (i == 0 or not argv[1:][i - 1].startswith("-"))
                     for i, a in enumerate(argv[1:]))
    return {(argv[0], f) for f in options | ({"<positional>"} if positional else set())} or {(argv[0], "<bare>")}


def _end_to_end_invocations(values: dict[str, str]) -> list[Command]:
    """README's own command lines first, then table invocations that exercise something not yet run: every
    documented option runs once, without repeating an expensive backfill for each combination."""
    covered: set[tuple[str, str]] = set()
    chosen = []
    # README's prose uses the table's placeholders too (`asr-pipeline backfill KEY`): give them real values
    prose = [Command(tuple(values.get(a, a) for a in c.argv), c.where) for c in readme_commands("asr-pipeline")]
    for command in prose + table_invocations(values):
        if not command.argv or command.argv[0] not in RUN_END_TO_END:
            continue
        features = _features(command.argv)
        if not features <= covered:
            covered |= features
            chosen.append(command)
    # retiring the champion changes what `champion` prints: last
    return sorted(chosen, key=lambda c: "--retire" in c.argv)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_short_readme_commands_run_end_to_end_after_the_demo(demo_project):
    project, environment = demo_project["path"], demo_project["env"]
    home = project / ".asr_home"

    def asr_pipeline(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(demo_project["bin"] / "asr-pipeline"), *argv], cwd=project, env=environment,
                              capture_output=True, text=True, timeout=600)

    status = json.loads(asr_pipeline("status", "--json").stdout)
    values = {**PLACEHOLDERS, "KEY": status["partitions"][0]["key"],
              "FILE": str(sorted((home / "demo_audio").glob("*.wav"))[0]),
              "DIR": str(home / "storage" / "finetuned_checkpoint")}
    invocations = _end_to_end_invocations(values)
    assert {c.argv[0] for c in invocations} == RUN_END_TO_END
    assert ("backfill", "--all") in {c.argv for c in invocations}
    failures = []
    for command in invocations:
        result = asr_pipeline(*command.argv)
        if result.returncode != 0:
            failures.append(f"{command.where}: `asr-pipeline {' '.join(command.argv)}` exited {result.returncode}:"
                            f"\n{(result.stdout + result.stderr)[-2000:]}")
    assert not failures, "\n\n".join(failures)
