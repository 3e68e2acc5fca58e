"""Shared fixtures: a real MariaDB database per session, real synthetic Korean audio, a real tiny Whisper.

MySQL: ASR_TEST_MYSQL_URL (default the local server, root without password, database `test`). The tests create a
database of their own and drop it afterwards. With ASR_TEST_REQUIRE_MYSQL=1 (CI) an unreachable server fails the
run instead of skipping the MySQL tests.
whisper-base: ASR_TEST_BASE_MODEL points at a directory built by shared/tools/whisper_base_offline/build.sh;
with ASR_TEST_REQUIRE_BASE_MODEL=1 its absence is a failure.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from asr_pipeline.core.placeholder_model import build_tiny_whisper
from asr_pipeline.core.synth import demo_sentences, write_demo_corpus

DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
PACKAGE = Path(__file__).resolve().parent.parent / "asr_pipeline"
# Any ASR_ name written in the package's source (settings, resources, launcher, ...): a variable someone adds is
# cleared without anyone remembering to list it here. ASR_TEST_* are the suite's own switches, never the package's.
VARIABLE_NAME = re.compile(r"\bASR_[A-Z][A-Z0-9_]*\b")
pytest_plugins = ["asr_pipeline_tests.required_groups", "pytester"]


def package_variables() -> list[str]:
    """Every environment variable the package may read: ASR_* names found in asr_pipeline/**/*.py, and
    DAGSTER_HOME."""
    names = {match for path in PACKAGE.rglob("*.py") for match in VARIABLE_NAME.findall(path.read_text("utf-8"))}
    return sorted(name for name in names if not name.startswith("ASR_TEST_")) + ["DAGSTER_HOME"]


ASR_VARIABLES = package_variables()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No test sees the developer's own ASR_* settings."""
    for name in ASR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def mysql_server_url() -> str:
    url = os.environ.get("ASR_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        message = f"MySQL/MariaDB not reachable at {sa.make_url(url).render_as_string(hide_password=True)}: {exc}"
        if os.environ.get("ASR_TEST_REQUIRE_MYSQL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture()
def mysql_database(mysql_server_url):
    """A fresh database on the real server, dropped afterwards; yields its URL."""
    name = f"asr_test_{uuid.uuid4().hex[:10]}"
    server = sa.create_engine(mysql_server_url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    url = sa.make_url(mysql_server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


def create_notebook_table(url: str, table: str = "training_datas") -> sa.Engine:
    """The table as the notebook's database has it (id, raw_data, transcript)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"CREATE TABLE `{table}` (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, raw_data VARCHAR(512), "
            "transcript TEXT) DEFAULT CHARSET=utf8mb4"))
    return engine


@pytest.fixture(scope="session")
def korean_clips(tmp_path_factory) -> list[dict]:
    """40 espeak-ng Korean utterances (22.05 kHz WAV, every 10th 44.1 kHz stereo FLAC), 5 per episode."""
    return write_demo_corpus(tmp_path_factory.mktemp("korean_audio"), 40, emit=lambda _: None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny", demo_sentences(200))


@pytest.fixture(scope="session")
def whisper_base_dir() -> Path:
    path = os.environ.get("ASR_TEST_BASE_MODEL")
    if not path or not (Path(path) / "model.safetensors").is_file():
        message = "ASR_TEST_BASE_MODEL does not point at a whisper-base built by whisper_base_offline/build.sh"
        if os.environ.get("ASR_TEST_REQUIRE_BASE_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(path)


@pytest.fixture()
def pipeline_env(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir):
    """Rows stored the way the archive stores them (/cul_m01/...), mapped to where the files really are."""
    audio_dir = Path(korean_clips[0]["audio_path"]).parent
    engine = create_notebook_table(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": "/cul_m01/archive/" + Path(c["audio_path"]).name, "t": c["transcript"]}
                      for c in korean_clips]
                     + [{"p": "/cul_m01/archive/DEMO_202601019999_00001.wav", "t": "파일이 없는 행"}])
    engine.dispose()
    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASR_DB_URL", mysql_database)
    monkeypatch.setenv("ASR_PATH_MAP", f"/cul_m01/archive/={audio_dir}/")
    monkeypatch.setenv("ASR_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ASR_SPLIT_RATIOS", "60/20/20")
    return tmp_path / "home"


@pytest.fixture()
def password_user(mysql_server_url, mysql_database):
    """A user with a password and SELECT on the test database only; dropped afterwards."""
    user = f"asr_{uuid.uuid4().hex[:8]}"
    password = f"Pw{uuid.uuid4().hex}"  # letters and digits only, so it appears verbatim wherever it leaks
    database = sa.make_url(mysql_database).database
    server = sa.create_engine(mysql_server_url)
    hosts = ["%", "localhost", "127.0.0.1"]
    with server.begin() as conn:
        for host in hosts:
            conn.execute(sa.text(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY :pw"), {"pw": password})
            conn.execute(sa.text(f"GRANT SELECT ON `{database}`.* TO '{user}'@'{host}'"))
    try:
        yield user, password
    finally:
        with server.begin() as conn:
            for host in hosts:
                conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'{host}'"))
        server.dispose()
