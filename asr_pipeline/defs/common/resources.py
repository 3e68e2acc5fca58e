"""Dagster resources: the transcript database and the pipeline's settings (both read from the environment)."""


import os
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from asr_pipeline.core import settings as env
from asr_pipeline.core.promotion import PROMOTION_RULES, PromotionPolicy
from asr_pipeline.core.benchmark_sets import parse_benchmark_sets, parse_gate
from asr_pipeline.core.database import TableSpec, TranscriptTable, masked
from asr_pipeline.core.model import BaseModel, cudnn_attention_allowed, resolve_base_model
from asr_pipeline.core.settings import AudioRoots, PathMap, SplitRatios
from asr_pipeline.core.text import NormalizationPolicy


class TranscriptDatabase(dg.ConfigurableResource):
    """The table of (id, audio path, transcript) rows. The URL comes from ASR_DB_URL through dg.EnvVar, so the
    UI shows the variable's name, never the password."""

    url: str = Field(description="SQLAlchemy URL, e.g. mysql+pymysql://user:pw@host/db (from ASR_DB_URL)")
    table: str = Field(default="training_datas", description="source table (ASR_DB_TABLE)")
    id_column: str = Field(default="id", description="integer primary key column (ASR_DB_ID_COLUMN)")
    audio_column: str = Field(default="raw_data", description="audio path column (ASR_DB_AUDIO_COLUMN)")
    transcript_column: str = Field(default="transcript", description="transcript column (ASR_DB_TRANSCRIPT_COLUMN)")
    updated_column: str = Field(default="updated_at", description="change-tracking timestamp column, used when the "
                                "table has it (ASR_DB_UPDATED_COLUMN)")

    _reader: TranscriptTable | None = PrivateAttr(default=None)

    def spec(self) -> TableSpec:
        return TableSpec(self.table, self.id_column, self.audio_column, self.transcript_column,
                         self.updated_column or None)

    def resolved_url(self) -> str:
        """Inside a run Dagster has resolved dg.EnvVar already; outside one (the CLI, a sensor's own reader) we do."""
        if isinstance(self.url, dg.EnvVar):
            value = self.url.get_value()
            if not value:
                raise env.ConfigError(f"{self.url.env_var_name} is not set")
            return value
        return self.url

    def open_table(self, retries: int = 3, backoff_s: float = 1.0) -> TranscriptTable:
        """A new reader the caller disposes (sensors: one per tick, short retries)."""
        return TranscriptTable(self.resolved_url(), self.spec(), retries=retries, backoff_s=backoff_s)

    def reader(self) -> TranscriptTable:
        if self._reader is None:
            self._reader = self.open_table()
        return self._reader

    def describe(self) -> str:
        return f"{self.spec().table} at {masked(self.resolved_url())}"

    def teardown_after_execution(self, context) -> None:
        if self._reader is not None:
            self._reader.dispose()


class PipelineSettings(dg.ConfigurableResource):
    """Where things live and how rows become examples; every field has an environment variable (README)."""

    home: str = Field(description="ASR_HOME: root of everything the pipeline writes")
    path_map: str = Field(default="", description="ASR_PATH_MAP: FROM=TO prefix rewrites, ';'-separated")
    split_ratios: str = Field(default=env.DEFAULT_SPLIT_RATIOS, description="ASR_SPLIT_RATIOS: train/valid/test")
    group_pattern: str = Field(default=env.DEFAULT_GROUP_PATTERN,
                               description="ASR_GROUP_PATTERN: regex with (?P<group>) for the episode id")
    base_model: str = Field(default=env.DEFAULT_BASE_MODEL, description="ASR_BASE_MODEL: hub id or local dir")
    allow_placeholder_model: bool = Field(
        default=True, description="use a tiny offline Whisper when the default base model cannot be reached")
    audio_roots: str = Field(default="", description="ASR_AUDIO_ROOTS: colon-separated directories audio may "
                             "come from (default: the ASR_PATH_MAP targets and ASR_HOME)")
    max_quarantine_rate: float = Field(default=0.2, description="ASR_MAX_QUARANTINE_RATE: above it, the "
                                       "quarantine check fails and blocks featurization")
    max_suspect_audio_rate: float = Field(default=0.2, description="ASR_MAX_SUSPECT_AUDIO_RATE: above this share "
                                          "of a batch's kept clips (10 clips or more, or most of a small batch), "
                                          "near-silent or down-mix-cancelled clips block the batch; below, they are "
                                          "named as a warning")
    batch_rows: int = Field(default=10_000, description="ASR_BATCH_ROWS: most rows in one ingest batch")
    batch_max_wait_minutes: float = Field(default=60.0, description="ASR_BATCH_MAX_WAIT_MINUTES: pending rows fewer "
                                          "than ASR_BATCH_ROWS become a batch once the oldest has waited this long "
                                          "(0: every sensor tick)")
    check_batches_per_tick: int = Field(default=20, description="ASR_CHECK_BATCHES_PER_TICK: existing batches whose "
                                        "fingerprint one sensor tick re-checks, in rotation")
    max_audio_seconds: float = Field(default=30.0, description="ASR_MAX_AUDIO_SECONDS: longer clips are left out")
    min_audio_seconds: float = Field(default=0.1, description="ASR_MIN_AUDIO_SECONDS: shorter clips are left out")
    normalize_punctuation: str = Field(default="strip", description="ASR_NORMALIZE_PUNCTUATION: strip | keep")
    normalize_spacing: str = Field(default="ignore", description="ASR_NORMALIZE_SPACING: ignore | keep (normalised "
                                   "CER)")
    normalize_numbers: str = Field(default="korean", description="ASR_NORMALIZE_NUMBERS: korean (0.1% -> 영 점 일 "
                                   "프로) | digits (the reverse) | keep")
    programme_pattern: str = Field(default=env.DEFAULT_PROGRAMME_PATTERN, description="ASR_PROGRAMME_PATTERN: regex "
                                   "with (?P<programme>) matched against a clip's episode group, for the report")
    promotion_margin: float = Field(default=0.005, description="ASR_PROMOTION_MARGIN: how much lower (absolute "
                                    "normalised CER) a challenger's test CER must be to replace the champion")
    promotion_rule: str = Field(default="significant", description="ASR_PROMOTION_RULE: significant (the 95% upper "
                                "bound of challenger − incumbent, paired by episode, below −margin) | point")
    promotion_min_episodes: int = Field(default=10, description="ASR_PROMOTION_MIN_EPISODES: fewest test episodes the "
                                        "significant rule decides on (fewer: the champion stays)")
    hallucination_margin: float = Field(default=0.01, description="ASR_HALLUCINATION_MARGIN: how much higher a "
                                        "challenger's hallucination share may be than the incumbent's")
    eval_max_utterances: int = Field(default=2000, description="ASR_EVAL_MAX_UTTERANCES: test utterances the nightly "
                                     "report decodes (a stable sample stratified by episode); 0: the whole split")
    benchmark_sets: str = Field(default="", description="ASR_BENCHMARK_SETS: fixed evaluation sets, NAME=FOLDER "
                                "entries separated by os.pathsep; each folder holds manifest.csv (audio_path,transcript)")
    benchmark_gate: str = Field(default="block", description="ASR_BENCHMARK_GATE: block | warn, when the challenger "
                                "is worse than the champion (or the base model, with none) on a benchmark set by more than "
                                "ASR_PROMOTION_MARGIN")
    export_margin: float = Field(default=0.05, description="ASR_EXPORT_MARGIN: how much worse (normalised CER) the "
                                 "CTranslate2 int8 export may score than the checkpoint before the promotion is "
                                 "blocked")
    champion_keep: int = Field(default=5, description="ASR_CHAMPION_KEEP: promoted models whose copies stay in "
                               "ASR_HOME/champion/models (the latest promotions; the champion's always); 0: every one")

    def parsed_path_map(self) -> PathMap:
        return PathMap.parse(self.path_map)

    def parsed_split_ratios(self) -> SplitRatios:
        return SplitRatios.parse(self.split_ratios)

    def parsed_audio_roots(self) -> AudioRoots:
        return AudioRoots.from_settings(self.audio_roots, self.parsed_path_map(), self.home_dir())

    def normalization_policy(self) -> NormalizationPolicy:
        return NormalizationPolicy(self.normalize_punctuation, self.normalize_spacing, self.normalize_numbers)

    def promotion_policy(self) -> PromotionPolicy:
        return PromotionPolicy(self.promotion_rule, self.promotion_margin, self.hallucination_margin,
                               parse_gate(self.benchmark_gate), self.promotion_min_episodes, self.export_margin)

    def parsed_benchmark_sets(self) -> list[tuple[str, Path]]:
        return parse_benchmark_sets(self.benchmark_sets)

    def home_dir(self) -> Path:
        return Path(self.home)

    def resolve_base(self, corpus=()) -> BaseModel:
        return resolve_base_model(self.base_model, self.allow_placeholder_model, self.home_dir(), corpus)


def settings_from_environment() -> PipelineSettings:
    """Validate every variable now, so a typo fails at load time with the variable's name in the message."""
    home = env.asr_home()
    path_map = os.environ.get("ASR_PATH_MAP", "")
    PathMap.parse(path_map)
    ratios = env.split_ratios()
    pattern = env.group_pattern()
    policy = env.normalization_policy()
    cudnn_attention_allowed()  # read where training and decoding start; checked here so a typo fails at load time
    return PipelineSettings(
        home=str(home),
        path_map=path_map,
        split_ratios=f"{ratios.train}/{ratios.valid}/{ratios.test}",
        group_pattern=pattern,
        base_model=env.base_model(),
        allow_placeholder_model=env.base_model_is_default(),
        audio_roots=os.environ.get("ASR_AUDIO_ROOTS", ""),
        max_quarantine_rate=_rate_env("ASR_MAX_QUARANTINE_RATE", 0.2),
        max_suspect_audio_rate=_rate_env("ASR_MAX_SUSPECT_AUDIO_RATE", 0.2),
        batch_rows=_int_env("ASR_BATCH_ROWS", 10_000),
        batch_max_wait_minutes=_number_env("ASR_BATCH_MAX_WAIT_MINUTES", 60.0, float, lambda v: 0 <= v < 1e6,
                                           "a number of minutes, 0 or more (0: cut a batch every tick)"),
        check_batches_per_tick=_int_env("ASR_CHECK_BATCHES_PER_TICK", 20),
        max_audio_seconds=_float_env("ASR_MAX_AUDIO_SECONDS", 30.0),
        min_audio_seconds=_float_env("ASR_MIN_AUDIO_SECONDS", 0.1),
        normalize_punctuation=policy.punctuation,
        normalize_spacing=policy.spacing,
        normalize_numbers=policy.numbers,
        programme_pattern=env.programme_pattern(),
        promotion_margin=_number_env("ASR_PROMOTION_MARGIN", 0.005, float, lambda v: 0.0 <= v < 1.0,
                                     "an absolute CER margin between 0 and 1, e.g. 0.005"),
        promotion_rule=_choice_env("ASR_PROMOTION_RULE", "significant", PROMOTION_RULES),
        promotion_min_episodes=_number_env("ASR_PROMOTION_MIN_EPISODES", 10, int, lambda v: v >= 2,
                                           "a whole number of episodes, at least 2"),
        hallucination_margin=_number_env("ASR_HALLUCINATION_MARGIN", 0.01, float, lambda v: 0.0 <= v <= 1.0,
                                         "a share of utterances between 0 and 1, e.g. 0.01"),
        eval_max_utterances=_number_env("ASR_EVAL_MAX_UTTERANCES", 2000, int, lambda v: v >= 0,
                                        "a whole number >= 0 (0: the whole test split)"),
        benchmark_sets=_benchmark_sets_env(),
        benchmark_gate=parse_gate(os.environ.get("ASR_BENCHMARK_GATE")),
        export_margin=_number_env("ASR_EXPORT_MARGIN", 0.05, float, lambda v: 0.0 <= v <= 1.0,
                                  "an absolute CER margin between 0 and 1, e.g. 0.05"),
        champion_keep=_number_env("ASR_CHAMPION_KEEP", 5, int, lambda v: v >= 0,
                                  "a whole number of promoted models to keep, 0 or more (0: keep every one)"),
    )


def _benchmark_sets_env() -> str:
    value = os.environ.get("ASR_BENCHMARK_SETS", "")
    parse_benchmark_sets(value)  # a missing folder or manifest fails now, naming the variable
    return value


def database_from_environment() -> TranscriptDatabase:
    names = {
        "table": os.environ.get("ASR_DB_TABLE", "training_datas"),
        "id_column": os.environ.get("ASR_DB_ID_COLUMN", "id"),
        "audio_column": os.environ.get("ASR_DB_AUDIO_COLUMN", "raw_data"),
        "transcript_column": os.environ.get("ASR_DB_TRANSCRIPT_COLUMN", "transcript"),
        "updated_column": os.environ.get("ASR_DB_UPDATED_COLUMN", "updated_at"),
    }
    TableSpec(**names)  # validates the identifiers
    url = dg.EnvVar("ASR_DB_URL") if os.environ.get("ASR_DB_URL") else env.default_database_url()
    return TranscriptDatabase(url=url, **names)


def _number_env(name: str, default, cast, valid, expected: str):
    """A numeric environment variable, or a ConfigError that names it and says what it must be."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise env.ConfigError(f"{name} must be {expected}, got {raw!r}")
    return value


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise env.ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _float_env(name: str, default: float) -> float:
    return _number_env(name, default, float, lambda v: v > 0, "a positive number of seconds")


def _rate_env(name: str, default: float) -> float:
    return _number_env(name, default, float, lambda v: 0.0 <= v <= 1.0, "a fraction between 0 and 1")


def _int_env(name: str, default: int) -> int:
    return _number_env(name, default, int, lambda v: v >= 1, "a positive whole number")
