"""Champion and challenger: the decision rule, the pointer, the copy and the history."""

import json

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
    from pathlib import Path
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
    from pathlib import Path
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
