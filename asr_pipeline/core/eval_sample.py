"""The nightly report's sample of the test split: bounded, stable as data arrives, stratified by episode.

Episodes are ranked by a hash of their id and clips within an episode by a hash of their row id, so the ranking
never depends on what else is in the table. The sample takes up to `per_episode` clips of each episode in rank
order until it holds `max_utterances`. It is sticky: the previous night's sample (its ids, remembered beside the
hypothesis cache) is kept as long as those rows exist, and only topped up from the ranking when rows are gone,
so new test episodes do not reshuffle it and the hypotheses of unchanged models stay cached. max_utterances 0
(or None) means the whole split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from asr_pipeline.core.storage import write_json

log = logging.getLogger(__name__)

DEFAULT_MAX_UTTERANCES = 2000
DEFAULT_PER_EPISODE = 20


def _rank(text: str) -> str:
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvalSample:
    positions: list[int]  # indices into the split's rows, ascending
    split_rows: int
    episodes: int
    full: bool

    def describe(self) -> dict:
        return {"utterances": len(self.positions), "test_split_rows": self.split_rows, "episodes": self.episodes,
                "full_split": self.full}


def stable_sample(ids: Sequence[int], groups: Sequence[str], max_utterances: int | None,
                  per_episode: int = DEFAULT_PER_EPISODE, previous: Sequence[int] = ()) -> EvalSample:
    """ids and groups: the test split's row ids and episodes; previous: the ids sampled last time."""
    count = len(ids)
    if not max_utterances or count <= max_utterances:
        return EvalSample(list(range(count)), count, len(set(groups)), True)
    by_episode: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        by_episode.setdefault(str(group), []).append(position)
    position_of = {int(uid): p for p, uid in enumerate(ids)}
    chosen: list[int] = []
    taken: dict[str, int] = {}
    for uid in previous:  # sticky: last night's rows that still exist, in their old order...
        p = position_of.get(int(uid))
        if p is None or len(chosen) >= max_utterances:
            continue
        if taken.get(str(groups[p]), 0) >= per_episode:
            continue  # ...within the cap: rows regrouped since (a new ASR_GROUP_PATTERN) can join one episode
        chosen.append(p)
        taken[str(groups[p])] = taken.get(str(groups[p]), 0) + 1
    already = set(chosen)
    for episode in sorted(by_episode, key=_rank):
        if len(chosen) >= max_utterances:
            break
        for p in sorted(by_episode[episode], key=lambda q: _rank(str(ids[q]))):
            if taken.get(episode, 0) >= per_episode or len(chosen) >= max_utterances:
                break
            if p not in already:
                chosen.append(p)
                taken[episode] = taken.get(episode, 0) + 1
    chosen.sort()
    return EvalSample(chosen, count, len({str(groups[p]) for p in chosen}), False)


class SampleMemory:
    """The last sample's ids, per (max_utterances, per_episode), in $ASR_HOME/cache/test_sample.json: one entry
    per size, so an evaluation of the whole split or of another size (from the UI) does not make the nightly one
    draw a new sample (its base and champion hypotheses would all be decoded again). At most KEPT sizes."""

    KEPT = 8

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / "test_sample.json" if cache_dir else None

    @staticmethod
    def _key(max_utterances: int | None, per_episode: int) -> str:
        return f"{max_utterances}/{per_episode}"

    def _samples(self) -> dict:
        if self.path is None:
            return {}
        try:  # absent (the first night), unreadable, not traversable: a new sample
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(saved, dict):
            return {}
        if "samples" in saved and isinstance(saved["samples"], dict):
            return saved["samples"]
        if "ids" in saved:  # the file of an earlier version: one sample
            return {self._key(saved.get("max_utterances"), saved.get("per_episode")): saved.get("ids", [])}
        return {}

    def previous(self, max_utterances: int | None, per_episode: int) -> list[int]:
        ids = self._samples().get(self._key(max_utterances, per_episode), [])
        try:
            return [int(i) for i in ids] if isinstance(ids, list) else []
        except (TypeError, ValueError, OverflowError):  # a damaged file: a new sample
            return []

    def remember(self, ids: Sequence[int], max_utterances: int | None, per_episode: int) -> None:
        if self.path is None:
            return
        samples = self._samples()
        key = self._key(max_utterances, per_episode)
        samples.pop(key, None)  # re-inserted last: the least recently remembered sizes go first
        samples[key] = [int(i) for i in ids]
        try:
            write_json(self.path, {"samples": dict(list(samples.items())[-self.KEPT:])})
        except OSError as exc:  # a read-only or full cache costs tomorrow's re-decode, never tonight's report
            log.warning("the test sample was not remembered in %s (%s): the next evaluation may draw another one "
                        "and decode every model again", self.path, exc)
