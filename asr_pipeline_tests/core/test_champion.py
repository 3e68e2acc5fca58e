"""Champion and challenger: the decision rule, the pointer, the copy and the history."""

import json
from pathlib import Path

from asr_pipeline.core.champion import current_champion, promote, promotion_history


def _checkpoint(path, marker):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"marker": marker}))
    (path / "model.safetensors").write_bytes(b"weights " + marker.encode())
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events").write_text("not copied")
    return path


def _report(cer):
    return {"finetuned": {"cer": cer, "cer_normalized": cer - 0.01, "wer": 2 * cer}, "test_rows": 10,
            "json_path": "/x/report.json", "promotion": {"promote": True}}


def test_promotion_copies_the_checkpoint_moves_the_pointer_and_keeps_history(tmp_path):
    home = tmp_path / "home"
    assert current_champion(home) is None and promotion_history(home) == []
    first = promote(home, _checkpoint(tmp_path / "ckpt1", "one"), None, _report(0.4), run_id="aaaaaaaa-1")
    export = tmp_path / "ct2"
    export.mkdir()
    (export / "model.bin").write_bytes(b"ct2")
    second = promote(home, _checkpoint(tmp_path / "ckpt2", "two"), export, _report(0.3), run_id="bbbbbbbb-2")
    assert current_champion(home) == second
    assert second["previous_model_path"] == first["model_path"] and second["test_cer"] == 0.3
    assert json.loads((tmp_path / "home/champion/models").joinpath(
        second["model_path"].split("/models/")[1], "config.json").read_text()) == {"marker": "two"}
    assert (tmp_path / "home/champion/models" / second["ctranslate2_path"].split("/models/")[1] / "model.bin").exists()
    # the champion survives the training directory being rewritten
    (tmp_path / "ckpt2" / "model.safetensors").write_bytes(b"next training")
    assert (Path(second["model_path"]) / "model.safetensors").read_bytes() == b"weights two"
    assert not (Path(second["model_path"]) / "tensorboard").exists()
    assert [h["test_cer"] for h in promotion_history(home)] == [0.4, 0.3]
    assert Path(first["model_path"]).exists()  # earlier champions stay, for rollback


def test_retiring_lets_the_next_challenger_in_and_keeps_the_record(tmp_path):
    from asr_pipeline.core.champion import retire_champion

    home = tmp_path / "home"
    assert retire_champion(home, "nothing to retire") is None
    first = promote(home, _checkpoint(tmp_path / "ckpt1", "one"), None, _report(0.4))
    entry = retire_champion(home, "base model changed")
    assert current_champion(home) is None and entry["model_path"] == first["model_path"]
    assert list((home / "champion").glob("champion.retired-*.json"))
    assert promotion_history(home)[-1]["reason"] == "base model changed"

    assert Path(first["model_path"]).exists()


def test_a_champion_that_takes_other_features_is_not_compared(tmp_path):
    from types import SimpleNamespace
    from asr_pipeline.core.evaluation import champion_comparable

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_mel_bins": 128}))  # large-v3's 128 bins
    pointer = {"model_path": str(model)}
    assert not champion_comparable(pointer, [SimpleNamespace(n_mels=80)])
    assert champion_comparable(pointer, [SimpleNamespace(n_mels=128)])
    assert not champion_comparable({"model_path": str(tmp_path / "gone")}, [SimpleNamespace(n_mels=128)])
    assert not champion_comparable(None, [SimpleNamespace(n_mels=128)])


def test_a_champion_trained_on_another_split_is_not_compared_and_the_reason_says_so(tmp_path):
    """After ASR_GROUP_PATTERN or ASR_SPLIT_RATIOS changed (and a backfill), rows of today's test split were the
    champion's training rows: scoring it there would flatter it against a challenger trained on the new split."""
    from types import SimpleNamespace
    from asr_pipeline.core.evaluation import champion_comparable, champion_unavailable, split_settings

    def shard(ratios, pattern=r"^(?P<group>[^\W_]+_\d{12,})_\d+$"):
        inputs = {"ASR_SPLIT_RATIOS": ratios, "ASR_GROUP_PATTERN": pattern, "ASR_BASE_MODEL": "/m"}
        return SimpleNamespace(n_mels=80, meta={"version_inputs": inputs})

    old, new = [shard("0.800000/0.100000/0.100000")] * 2, [shard("0.700000/0.050000/0.250000")] * 2
    model = _checkpoint(tmp_path / "ckpt", "x")
    (model / "config.json").write_text(json.dumps({"num_mel_bins": 80}))
    report = {**_report(0.3), "split": split_settings(old)}
    pointer = promote(tmp_path / "home", model, None, report, run_id="aaaaaaaa-1")
    assert pointer["split"] == {"ASR_SPLIT_RATIOS": "0.800000/0.100000/0.100000",
                                "ASR_GROUP_PATTERN": r"^(?P<group>[^\W_]+_\d{12,})_\d+$"}
    assert champion_comparable(pointer, old) and champion_unavailable(pointer, old) is None
    why = champion_unavailable(pointer, new)
    assert not champion_comparable(pointer, new)
    assert "trained on another split" in why and "0.800000/0.100000/0.100000' -> '0.700000/0.050000/0.250000" in why
    assert "ASR_GROUP_PATTERN" not in why  # only what changed is named
    assert "ASR_GROUP_PATTERN" in champion_unavailable(pointer, [shard("0.800000/0.100000/0.100000", "(?P<group>x)")])
    # a smaller test share only moves test rows into train or valid: nothing the champion trained on is tested
    assert champion_comparable(pointer, [shard("0.850000/0.100000/0.050000")])
    assert champion_comparable(pointer, [shard("0.800000/0.150000/0.050000")])
    assert not champion_comparable(pointer, [shard("0.850000/0.000000/0.150000")])  # more test, from valid too
    # unknown on either side (a champion promoted before splits were recorded, shards made by an older version or
    # with mixed settings): compared, as before
    assert champion_comparable({**pointer, "split": None}, new)
    assert split_settings([old[0], new[0]]) is None and champion_comparable(pointer, [old[0], new[0]])
    assert split_settings([SimpleNamespace(n_mels=80)]) is None


def test_only_the_latest_promotions_keep_their_copies(tmp_path, capsys, monkeypatch):
    """ASR_CHAMPION_KEEP=2 after four promotions: the two older copies (link and version directory) are removed,
    the history still lists four promotions and records each removal, which `champion --history` prints."""
    from argparse import Namespace
    from asr_pipeline.cli.models import cmd_champion
    from asr_pipeline.core.champion import promotions, prune_models

    home = tmp_path / "home"
    pointers = [promote(home, _checkpoint(tmp_path / f"ckpt{i}", str(i)), None, _report(0.5 - i / 10),
                        run_id=f"run{i:05d}-x") for i in range(4)]
    models = home / "champion" / "models"
    assert prune_models(home, keep=0) == []  # 0: every copy stays
    messages = []

    removed = prune_models(home, keep=2, emit=messages.append)

    assert sorted(removed) == sorted(Path(p["model_path"]).parent for p in pointers[:2])
    assert [Path(p["model_path"]).exists() for p in pointers] == [False, False, True, True]
    assert len([v for v in models.iterdir() if v.name.startswith(".")]) == 2  # only the kept copies' versions
    assert len(messages) == 2 and all("older than the latest 2 promotions" in m for m in messages)
    history = promotion_history(home)
    assert len(promotions(history)) == 4 and [e["model_path"] for e in history if "removed_at" in e] == \
        [p["model_path"] for p in pointers[:2]]
    assert prune_models(home, keep=2) == []  # nothing more to remove
    monkeypatch.setenv("ASR_HOME", str(home))
    cmd_champion(Namespace(retire=False, history=True, json=False))
    assert capsys.readouterr().out.count("copy removed (older than the latest 2 promotions") == 2


def test_the_champion_and_the_one_it_replaced_keep_their_copies(tmp_path):
    """keep=1: the champion's copy stays even when it is not the latest promotion (put back by hand), and so does the
    copy of the champion it replaced, which an evaluation that started before the promotion may still be decoding."""
    from asr_pipeline.core.champion import prune_models

    home = tmp_path / "home"
    a, b = (promote(home, _checkpoint(tmp_path / f"ckpt{n}", n), None, _report(0.4), run_id=f"{n * 8}-x")
            for n in "ab")
    assert prune_models(home, keep=1) == []  # b is the latest, a the one b replaced
    c = promote(home, _checkpoint(tmp_path / "ckptc", "c"), None, _report(0.3), run_id="cccccccc-x")
    assert prune_models(home, keep=1) == [Path(a["model_path"]).parent]
    (home / "champion" / "champion.json").write_text(json.dumps({**b, "previous_model_path": None}))  # put back
    assert prune_models(home, keep=1) == []  # b: the champion; c: the latest promotion
    assert Path(b["model_path"]).is_dir() and Path(c["model_path"]).is_dir()


def test_what_no_promotion_names_stays_and_half_copies_of_killed_promotions_go(tmp_path):
    """Copies no promotion in the history names (a promotion killed before its pointer moved, a lost history line)
    and anything a person put in models/ stay, with no message; with no history nothing is removed at all. What a
    promotion killed while copying left (a hidden staging folder of a gone process) is removed."""
    import os
    import subprocess
    import sys

    from asr_pipeline.core.champion import prune_models
    from asr_pipeline.core.storage import publish, staging_dir

    home = tmp_path / "home"
    models = home / "champion" / "models"

    def copy(name: str) -> Path:
        staged = staging_dir(models / name)
        (staged / "model").mkdir()
        publish(staged, models / name)
        return models / name

    unnamed = copy("20260101T000000-aaaaaaaa")
    by_hand = [copy("backup"), copy("2027-rollback"), models / "v2-manual"]
    by_hand[2].mkdir()
    (models / "NOTES.txt").write_text("which model is which")
    messages = []
    assert prune_models(home, keep=1, emit=messages.append) == []  # no history at all: nothing is removed
    for n in range(3):
        promote(home, _checkpoint(tmp_path / f"ckpt{n}", str(n)), None, _report(0.4), run_id=f"{n:08d}-x")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    killed_copy = models / f".20261127T020000-deadbeef.tmp-{child.pid}-0123abcd"  # its pid is gone
    (killed_copy / "model").mkdir(parents=True)

    removed = prune_models(home, keep=1, emit=messages.append)

    assert len(removed) == 1 and removed[0].name.endswith("-00000000")  # the oldest; the next is the one replaced
    assert unnamed.is_dir() and all(os.path.lexists(p) for p in by_hand) and (models / "NOTES.txt").exists()
    assert not killed_copy.exists()
    assert len(messages) == 1 and "older than the latest promotion" in messages[0]


def test_a_damaged_history_line_is_left_out_not_fatal(tmp_path):
    """A line cut short by a kill during an append, or edited by hand, does not stop pruning or the history."""
    from asr_pipeline.core.champion import promotions, prune_models

    home = tmp_path / "home"
    pointers = [promote(home, _checkpoint(tmp_path / f"ckpt{n}", str(n)), None, _report(0.4), run_id=f"{n:08d}-x")
                for n in range(3)]
    with open(home / "champion" / "history.jsonl", "a", encoding="utf-8") as history:
        history.write('"promoted_at in a string"\n7\n{"promoted_at": "x", "model_path": 7}\n{"promoted_at": "2026-')
    assert len(promotions(promotion_history(home))) == 3
    assert prune_models(home, keep=1) == [Path(pointers[0]["model_path"]).parent]


def test_an_entry_after_a_torn_line_is_a_line_of_its_own(tmp_path):
    """A kill during an append leaves a line without its newline: the next entries (a promotion, a removal, a
    retirement) must not be glued to it, or they would be lost with it (and their copies kept for good)."""
    from asr_pipeline.core.champion import promotions, prune_models, retire_champion

    home = tmp_path / "home"
    first = promote(home, _checkpoint(tmp_path / "ckpt0", "0"), None, _report(0.4), run_id="00000000-x")
    history = home / "champion" / "history.jsonl"
    history.write_bytes(history.read_bytes() + b'{"promoted_at": "2026-11-2')  # the next promotion's line, cut
    second = promote(home, _checkpoint(tmp_path / "ckpt1", "1"), None, _report(0.3), run_id="11111111-x")
    assert [p["model_path"] for p in promotions(promotion_history(home))] == [first["model_path"],
                                                                                second["model_path"]]
    history.write_bytes(history.read_bytes() + b'{"removed_at')
    third = promote(home, _checkpoint(tmp_path / "ckpt2", "2"), None, _report(0.2), run_id="22222222-x")
    assert prune_models(home, keep=1) == [Path(first["model_path"]).parent]
    history.write_bytes(history.read_bytes() + b'{"x')
    retire_champion(home, "base model changed")
    entries = promotion_history(home)
    assert [e.get("reason") for e in entries if "removed_at" in e or "retired_at" in e] == [
        entries[-2]["reason"], "base model changed"]
    assert len(promotions(entries)) == 3 and third["model_path"] == promotions(entries)[-1]["model_path"]
    assert history.read_bytes().endswith(b"\n") and b"\n\n" not in history.read_bytes()


def test_the_report_that_promoted_the_champion_is_known_and_a_retry_does_not_copy_it_again(tmp_path):
    """champion_model retried after a failure past the promotion (the pointer had moved) finds it done."""
    from asr_pipeline.core.champion import promoted_from

    home, checkpoint = tmp_path / "home", _checkpoint(tmp_path / "ckpt", "x")
    report = {**_report(0.3), "created_at": "2026-11-27T02:40:00+00:00", "finetuned_model": str(checkpoint)}
    assert promoted_from(home, report) is None
    pointer = promote(home, checkpoint, None, report, run_id="aaaaaaaa-1")
    assert promoted_from(home, report) == pointer
    assert promoted_from(home, {**report, "created_at": "2026-11-28T02:40:00+00:00"}) is None  # a later report
    assert promoted_from(home, {**report, "finetuned_model": "/other"}) is None
    assert promoted_from(home, {**report, "created_at": None}) is None


def test_unpublish_removes_only_what_publish_made(tmp_path):
    """A link publish() did not make is removed alone (its target is not ours); a link left dangling by a kill
    between removing the version and the link is removed by the next call."""
    import os
    from asr_pipeline.core.storage import publish, staging_dir, unpublish

    outside = tmp_path / "archive" / "B"
    outside.mkdir(parents=True)
    sibling = tmp_path / "models" / "B"
    sibling.mkdir(parents=True)
    os.symlink(outside, tmp_path / "models" / "A")
    unpublish(tmp_path / "models" / "A")
    assert not os.path.lexists(tmp_path / "models" / "A") and outside.is_dir() and sibling.is_dir()

    final = tmp_path / "models" / "C"
    publish(staging_dir(final), final)
    version = tmp_path / "models" / os.readlink(final)
    import shutil
    shutil.rmtree(version)  # killed after the version went, before the link did
    unpublish(final)
    assert not os.path.lexists(final)


def test_champion_keep_must_be_a_whole_number(tmp_path, monkeypatch):
    import pytest
    from asr_pipeline.core.errors import ConfigError
    from asr_pipeline.defs.common.resources import settings_from_environment

    monkeypatch.setenv("ASR_HOME", str(tmp_path))
    assert settings_from_environment().champion_keep == 5
    monkeypatch.setenv("ASR_CHAMPION_KEEP", "0")
    assert settings_from_environment().champion_keep == 0
    for value in ("-1", "all", "2.5"):
        monkeypatch.setenv("ASR_CHAMPION_KEEP", value)
        with pytest.raises(ConfigError, match="ASR_CHAMPION_KEEP"):
            settings_from_environment()
