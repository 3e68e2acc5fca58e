"""Which problems are open and whom we told: the memory that turns a stream of failing ticks and retries into one
alert per problem per repeat window, and one recovery message when it clears.

A problem is identified by kind + asset + batch. The ledger holds only open problems and undelivered messages, so it
stays small however long the pipeline runs. It lives in one JSON file (ASR_HOME/alerts/ledger.json), replaced
atomically under an exclusive lock, so it survives daemon restarts and two evaluations never interleave.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from asr_pipeline.core.locks import file_lock
from asr_pipeline.core.storage import write_json

MAX_OUTBOX = 200  # undelivered recoveries/digests kept while every destination is down; the oldest go first


@dataclass(frozen=True)
class Problem:
    kind: str       # e.g. run_failed, check_failed, pending_too_long, training_lag, rejected_hallucination
    asset: str
    batch: str      # "" when the problem is not about one batch
    text: str       # the alert, complete: what, where, when, what to do
    recovery: str   # sent once when the problem clears, to whoever got the alert

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.asset}|{self.batch}"


@dataclass(frozen=True)
class Outgoing:
    key: str          # the problem's key, or "outbox:<n>" for recoveries and digests
    text: str
    channels: tuple[str, ...]
    batch: str = ""   # the batch a problem or a recovery is about ("" for the rest): many at once are rolled up
    told: tuple[str, ...] = ()  # the channels this is a reminder on (told before): rolled up apart from new ones


class AlertLedger:
    def __init__(self, data: dict | None = None, path: Path | None = None):
        self.path = path  # where save() writes it (locked_ledger's file)
        data = data or {}
        self.open: dict[str, dict] = data.get("open", {})
        self.outbox: list[dict] = data.get("outbox", [])
        self.marks: dict[str, object] = data.get("marks", {})  # e.g. the last digested run, reported checks

    def to_json(self) -> dict:
        return {"open": self.open, "outbox": self.outbox[-MAX_OUTBOX:], "marks": self.marks}

    def due(self, problems: list[Problem], channels: list[str], now: float, repeat_s: float) -> list[Outgoing]:
        """Messages to send now: new problems, problems whose last alert is older than the repeat window (or was
        never delivered), recoveries of problems that cleared, and whatever is still waiting in the outbox."""
        current = {p.key: p for p in problems}
        troubled = {p.batch for p in problems if p.batch}
        owed: dict[str, set[str]] = {}  # batch -> channels told of a problem that became another one
        recovered: dict[str, dict] = {}  # batch -> its recovery queued this tick (two problems clearing: one message)
        for key in [k for k in self.open if k not in current]:
            entry = self.open.pop(key)
            told = [c for c, t in entry["sent"].items() if t is not None] + entry.get("owed", [])
            told = sorted({c for c in told if c in channels})
            batch = key.split("|")[2]
            if told and batch in troubled:
                # a batch that went from late to failed is not "done again": its new problem is alerted instead,
                # and whoever heard of the old one hears of the batch's recovery when the new one clears
                owed.setdefault(batch, set()).update(told)
            elif told and batch in recovered:
                message = recovered[batch]
                message["channels"] = sorted(set(message["channels"]) | set(told))
                if len(entry["recovery"]) > len(message["text"]):  # the one with more to say ("after 3 failed runs")
                    message["text"] = entry["recovery"]
            elif told:
                self.queue(entry["recovery"], told, batch=batch)
                if batch:
                    recovered[batch] = self.outbox[-1]
        heirs = {}  # the batch's problem that owes the recovery: one (the first by key), or it would be sent twice
        for key in sorted(current):
            heirs.setdefault(current[key].batch, key)
        due = []
        for key, problem in current.items():
            entry = self.open.setdefault(key, {"first_seen": now, "sent": {}})
            entry["recovery"] = problem.recovery
            if problem.batch in owed and heirs[problem.batch] == key:
                entry["owed"] = sorted(set(entry.get("owed", [])) | owed[problem.batch])
            waiting = tuple(c for c in channels
                            if entry["sent"].get(c) is None or now - entry["sent"][c] >= repeat_s)
            if waiting:
                told = tuple(c for c in waiting if entry["sent"].get(c) is not None)
                due.append(Outgoing(key, problem.text, waiting, problem.batch, told))
        for message in self.outbox:  # a destination no longer configured will never take what waits for it
            message["channels"] = [c for c in message["channels"] if c in channels]
        due += [Outgoing(f"outbox:{i}", m["text"], tuple(m["channels"]), m.get("batch", ""))
                for i, m in enumerate(self.outbox) if m["channels"]]
        return due

    def queue(self, text: str, channels: list[str], batch: str = "") -> None:
        self.outbox.append({"text": text, "channels": list(channels), **({"batch": batch} if batch else {})})

    def delivered(self, outgoing: Outgoing, channel: str, now: float) -> None:
        if outgoing.key.startswith("outbox:"):
            entry = self.outbox[int(outgoing.key.split(":", 1)[1])]
            entry["channels"] = [c for c in entry["channels"] if c != channel]
        else:
            self.open[outgoing.key]["sent"][channel] = now

    def save(self) -> None:
        """Written at once (atomically), after each delivery: a tick killed half way through its sends (the
        daemon restarted, the 60 s sensor timeout) must not send again what it already delivered."""
        if self.path is not None:
            write_json(self.path, self.to_json())

    def settle(self) -> None:
        """Drop outbox messages that reached every channel (call after a round of deliveries)."""
        self.outbox = [m for m in self.outbox if m["channels"]][-MAX_OUTBOX:]


@contextmanager
def locked_ledger(path: Path, timeout_s: float = 60.0) -> Iterator[AlertLedger]:
    """The ledger at `path`, written back (atomically) when the block ends without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock"), timeout_s):
        ledger = AlertLedger(json.loads(path.read_text(encoding="utf-8")) if path.exists() else None, path)
        yield ledger
        ledger.save()
