"""benchmarks/gpu_weights.py: weights carried to the GPU machine in parts, one a call, stashed there, joined back."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_weights  # noqa: E402

PART_MIB = 3000 / 2**20  # parts of 3,000 bytes: the model below (about 14 KB as float16) makes 5


@pytest.fixture
def model(tmp_path):
    """A model directory whose float32 weights are float16 values, as whisper-base's are, and its other files."""
    directory = tmp_path / "model"
    directory.mkdir()
    rng = np.random.default_rng(0)
    save_file({"encoder.weight": rng.standard_normal((40, 64)).astype(np.float16).astype(np.float32),
               "decoder.bias": rng.standard_normal(1500).astype(np.float16).astype(np.float32),
               "positions": np.arange(700, dtype=np.int64)}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text(json.dumps({"d_model": 64}))
    (files / "tokenizer.json").write_text("{}")
    return directory, files


def carry(tmp_path, parts: Path, names: list[str]) -> Path:
    """What one device call brings: the named files of the split, nothing else."""
    carried = tmp_path / "carried"
    shutil.rmtree(carried, ignore_errors=True)
    carried.mkdir()
    for name in names:
        shutil.copy(parts / name, carried / name)
    return carried


def test_parts_carried_one_a_call_join_to_the_same_weights(model, tmp_path):
    directory, files = model
    parts, stash = tmp_path / "parts", tmp_path / "stash"
    manifest = gpu_weights.split(directory, parts, PART_MIB)
    names = [p["name"] for p in manifest["parts"]]
    assert len(names) == 5 and all(p["bytes"] <= 3000 for p in manifest["parts"])
    for count, name in enumerate(names, start=1):
        intact, missing = gpu_weights.stash(carry(tmp_path, parts, [name, "manifest.json"]), stash)
        assert intact == names[:count] and missing == names[count:]
    out = gpu_weights.join(tmp_path / "carried", files, tmp_path / "joined", stash)
    original, joined = load_file(str(directory / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert original.keys() == joined.keys()
    assert all(np.array_equal(original[k], joined[k]) and original[k].dtype == joined[k].dtype for k in original)
    assert json.loads((out / "config.json").read_text()) == {"d_model": 64}
    assert (out / "weights_sha256.txt").read_text().split()[0] == manifest["sha256"]
    again = gpu_weights.join(tmp_path / "carried", files, tmp_path / "joined", stash)  # a rerun replaces it whole
    assert load_file(str(again / "model.safetensors")).keys() == original.keys()
    assert not (tmp_path / "joined.partial").exists()


def test_a_missing_or_damaged_part_is_named_and_nothing_is_joined(model, tmp_path, capsys):
    directory, files = model
    parts, stash = tmp_path / "parts", tmp_path / "stash"
    names = [p["name"] for p in gpu_weights.split(directory, parts, PART_MIB)["parts"]]
    with pytest.raises(SystemExit) as no_manifest:  # parts came, the manifest did not
        gpu_weights.join(carry(tmp_path, parts, names), files, tmp_path / "joined", stash)
    assert no_manifest.value.code == gpu_weights.MISSING and "manifest.json" in capsys.readouterr().err
    shutil.rmtree(stash)
    carried = carry(tmp_path, parts, [n for n in names if n != names[2]] + ["manifest.json"])
    with pytest.raises(SystemExit) as missing:
        gpu_weights.join(carried, files, tmp_path / "joined", stash)
    assert missing.value.code == gpu_weights.MISSING and names[2] in capsys.readouterr().err
    (stash / names[2]).write_bytes(b"cut short")  # a copy interrupted mid-way
    with pytest.raises(SystemExit) as damaged:
        gpu_weights.join(carried, files, tmp_path / "joined", stash)
    assert damaged.value.code == gpu_weights.MISSING and f"{names[2]} (damaged)" in capsys.readouterr().err
    assert not (tmp_path / "joined").exists()


def test_the_stash_command_fails_when_an_earlier_call_s_part_is_gone(model, tmp_path, monkeypatch):
    """A machine handed back between calls loses /tmp: the second call must say so, not the third."""
    directory, _ = model
    parts = tmp_path / "parts"
    names = [p["name"] for p in gpu_weights.split(directory, parts, PART_MIB)["parts"]]
    stash = ["--stash", str(tmp_path / "fresh_machine_stash"), "--expect", "2"]
    monkeypatch.setattr(sys, "argv", ["gpu_weights.py", "stash", "--parts",
                                      str(carry(tmp_path, parts, [names[1], "manifest.json"]))] + stash)
    with pytest.raises(SystemExit) as lost:
        gpu_weights.main()
    assert lost.value.code == gpu_weights.MISSING
    monkeypatch.setattr(sys, "argv", ["gpu_weights.py", "stash", "--parts",
                                      str(carry(tmp_path, parts, [names[0], "manifest.json"]))] + stash)
    gpu_weights.main()  # now parts 0 and 1 are both there


def test_weights_that_are_not_float16_values_are_refused(model, tmp_path):
    directory, _ = model
    save_file({"w": np.array([0.1, 0.2], dtype=np.float32)}, str(directory / "model.safetensors"))
    with pytest.raises(SystemExit, match="not exact in float16"):
        gpu_weights.split(directory, tmp_path / "parts", PART_MIB)
    assert not list(tmp_path.glob("parts/part-*"))
