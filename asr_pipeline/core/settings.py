"""Settings read from the environment, validated once, with messages that name the variable at fault.

Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from asr_pipeline.core.errors import ConfigError  # noqa: F401  (re-exported)

DEFAULT_BASE_MODEL = "openai/whisper-tiny"
DEFAULT_SPLIT_RATIOS = "80/10/10"
# The archive names clips <PROGRAMME>_<12+ digit broadcast stamp>_<segment>; the first two parts name the episode.
# The programme code is letters and digits of any script ([^\W_]: a word character that is not `_`), so a code in
# Hangul (뉴스데스크_202106270005_00001) groups by episode like an ASCII one instead of falling back to the row id.
DEFAULT_GROUP_PATTERN = r"^(?P<group>[^\W_]+_\d{12,})_\d+$"
# ...and the programme is the first part of that group (the report breaks CER down by programme).
DEFAULT_PROGRAMME_PATTERN = r"^(?P<programme>[^_]+)_"
SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def asr_home() -> Path:
    """Root of everything the pipeline writes (ASR_HOME, default ./.asr_home)."""
    return Path(os.environ.get("ASR_HOME") or ".asr_home").expanduser().resolve()


def default_database_url(home: Path | None = None) -> str:
    """The embedded default: an SQLite file inside ASR_HOME."""
    return f"sqlite:///{(home or asr_home()) / 'transcripts.sqlite'}"


def database_url() -> str:
    return os.environ.get("ASR_DB_URL") or default_database_url()


def validate_identifier(value: str, what: str) -> str:
    """Table and column names cannot be bound parameters, so they must be plain SQL identifiers."""
    if not isinstance(value, str) or not SQL_IDENTIFIER.match(value):
        raise ConfigError(
            f"{what} must be a plain SQL identifier (letters, digits, underscore; not starting with a digit; "
            f"at most 64 characters), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class SplitRatios:
    train: float
    valid: float
    test: float

    @classmethod
    def parse(cls, text: str, variable: str = "ASR_SPLIT_RATIOS") -> "SplitRatios":
        parts = [p.strip() for p in str(text).replace(":", "/").split("/")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
            raise ConfigError(f"{variable} must be three non-negative numbers like 80/10/10, got {text!r}")
        total = sum(values)
        return cls(*(v / total for v in values))

    def __str__(self) -> str:
        return f"{self.train:.0%}/{self.valid:.0%}/{self.test:.0%}"


@dataclass(frozen=True)
class PathMap:
    """Prefix rewrites from database paths to paths this machine can open (the notebook's NAS rewrite).

    ASR_PATH_MAP holds `FROM=TO` pairs separated by `;` or newlines, e.g. `/cul_m01/=/mnt/nas/cul_m01/`.
    The longest matching prefix wins. Windows and UNC paths (`\\\\nas\\cul_m01\\a.wav`) are compared with `/`
    separators, so `//nas/cul_m01/=/mnt/nas/cul_m01/` rewrites them.
    """

    rules: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str | None, variable: str = "ASR_PATH_MAP") -> "PathMap":
        rules = []
        for chunk in re.split(r"[;\n]", text or ""):
            chunk = chunk.strip()
            if not chunk:
                continue
            if "=" not in chunk:
                raise ConfigError(f"{variable} entries must look like FROM=TO, got {chunk!r}")
            source, target = (s.strip() for s in chunk.split("=", 1))
            if not source or not target:
                raise ConfigError(f"{variable} entry {chunk!r} has an empty side")
            rules.append((source.replace("\\", "/"), target))
        rules.sort(key=lambda rule: len(rule[0]), reverse=True)
        return cls(tuple(rules))

    def rewrite(self, path: str) -> str:
        normalised = str(path).strip().replace("\\", "/")
        for source, target in self.rules:
            if _prefix_matches(normalised, source):
                return target + normalised[len(source):]
        return normalised

    def __str__(self) -> str:
        return "; ".join(f"{s}={t}" for s, t in self.rules)


def _case_insensitive(source: str) -> bool:
    """UNC/SMB shares (//server/share/...) and drive paths (C:/...) live on case-insensitive file systems, where
    the database may spell one share \\\\NAS\\Cul_M01 and another row \\\\nas\\cul_m01."""
    return source.startswith("//") or re.match(r"^[A-Za-z]:/", source) is not None


def _prefix_matches(path: str, source: str) -> bool:
    if _case_insensitive(source):
        return path[: len(source)].casefold() == source.casefold()
    return path.startswith(source)


def split_ratios() -> SplitRatios:
    return SplitRatios.parse(os.environ.get("ASR_SPLIT_RATIOS") or DEFAULT_SPLIT_RATIOS)


def path_map() -> PathMap:
    return PathMap.parse(os.environ.get("ASR_PATH_MAP"))


def _named_pattern(variable: str, default: str, group: str, meaning: str) -> str:
    pattern = os.environ.get(variable) or default
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{variable} is not a valid regular expression: {exc}") from exc
    if group not in compiled.groupindex:
        raise ConfigError(f"{variable} must have a named group (?P<{group}>...) that captures {meaning}")
    return pattern


def group_pattern() -> str:
    return _named_pattern("ASR_GROUP_PATTERN", DEFAULT_GROUP_PATTERN, "group", "the episode id")


def programme_pattern() -> str:
    return _named_pattern("ASR_PROGRAMME_PATTERN", DEFAULT_PROGRAMME_PATTERN, "programme",
                          "the programme, matched against the episode group of each clip")


def normalization_policy():
    """ASR_NORMALIZE_PUNCTUATION (strip|keep), ASR_NORMALIZE_SPACING (ignore|keep), ASR_NORMALIZE_NUMBERS
    (korean|digits|keep); NormalizationPolicy validates them and names the variable at fault."""
    from asr_pipeline.core.text import NormalizationPolicy

    return NormalizationPolicy(
        punctuation=os.environ.get("ASR_NORMALIZE_PUNCTUATION") or "strip",
        spacing=os.environ.get("ASR_NORMALIZE_SPACING") or "ignore",
        numbers=os.environ.get("ASR_NORMALIZE_NUMBERS") or "korean",
    )


def base_model() -> str:
    return os.environ.get("ASR_BASE_MODEL") or DEFAULT_BASE_MODEL


def base_model_is_default() -> bool:
    return not os.environ.get("ASR_BASE_MODEL")


@dataclass(frozen=True)
class AudioRoots:
    """Directories audio may be read from. Paths are resolved first (symlinks and `..`), so a link or a
    `../../etc/passwd` in the database cannot reach outside them."""

    roots: tuple[Path, ...]
    source: str

    @classmethod
    def from_settings(cls, audio_roots: str | None, path_map: PathMap, home: Path) -> "AudioRoots":
        if audio_roots:
            entries = [p for p in audio_roots.split(os.pathsep) if p.strip()]  # ';' on Windows (C:\\...)
            return cls(tuple(Path(p).expanduser().resolve() for p in entries), "ASR_AUDIO_ROOTS")
        targets = [Path(target).expanduser().resolve() for _, target in path_map.rules]
        return cls(tuple([*targets, Path(home).resolve()]),
                   "ASR_AUDIO_ROOTS is unset, so the ASR_PATH_MAP targets and ASR_HOME")

    def resolve(self, path: str) -> Path | None:
        """The resolved path when it lies under a root, else None."""
        resolved = Path(path).expanduser().resolve()
        return resolved if any(resolved.is_relative_to(root) for root in self.roots) else None

    def reason(self) -> str:
        return f"path outside the allowed audio roots ({self.source}; set ASR_AUDIO_ROOTS to allow it)"
