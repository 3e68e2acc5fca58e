"""The report's sample, hypothesis cache and fixed benchmark sets (issue 11 point 9, issue 12 point 5), on a real
tiny Whisper and real featurized shards."""

import csv
import json
import shutil

import pandas as pd
import pytest
import torch

from asr_pipeline.core import evaluation
from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.benchmark_sets import BenchmarkSet, parse_benchmark_sets, parse_gate
from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.eval_sample import stable_sample
from asr_pipeline.core.features import FeatureShard, featurize_shard
from asr_pipeline.core.model import load_model, load_processor

# the random model babbles: keep it short; one temperature keeps these tests fast (the guards: test_decoding.py)
POLICY = DecodingPolicy(tokens_per_second=2.0, token_allowance=4, batch_size=8, temperatures=(0.0,))


@pytest.fixture(scope="module")
def test_shard(tmp_path_factory, korean_clips, tiny_model_dir):
    root = tmp_path_factory.mktemp("evaluation")
    clips = korean_clips[:15]  # three episodes of five clips
    manifest = pd.DataFrame([{"id": i + 1, "source_path": c["audio_path"], "audio_path": c["audio_path"],
                              "transcript": c["transcript"], "split": "test",
                              "group": c["audio_path"].rsplit("/", 1)[1].rsplit("_", 1)[0]}
                             for i, c in enumerate(clips)])
    (root / "audio").mkdir(), (root / "features").mkdir()
    resample_manifest(manifest, root / "audio", emit=lambda _: None)
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(root / "audio"), root / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    return FeatureShard(root / "features")


def _variant(tiny_model_dir, out, seed):
    """A copy of the tiny model with other weights: another checkpoint, as training would write it."""
    model = load_model(str(tiny_model_dir))
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(out)
    load_processor(str(tiny_model_dir)).save_pretrained(out)
    return out


@pytest.fixture()
def counted_generate(monkeypatch):
    """Every decoding pass the transformers runtime runs (its budget)."""
    from asr_pipeline.core.transformers_decoding import TransformersRuntime

    calls = []
    original = TransformersRuntime._generate

    def counting(self, hidden, cache, temperature, max_new_tokens, generator):
        calls.append(max_new_tokens)
        return original(self, hidden, cache, temperature, max_new_tokens, generator)

    monkeypatch.setattr(TransformersRuntime, "_generate", counting)
    return calls


def _evaluate(shard, base, checkpoint, champion, cache_dir, **options):
    return evaluation.evaluate_on_test(str(base), str(checkpoint), [shard], decoding=POLICY, emit=lambda _: None,
                                       champion={"model_path": str(champion)}, bootstrap_resamples=50,
                                       cache_dir=cache_dir, **options)


def test_an_unchanged_model_on_an_unchanged_sample_is_never_decoded_twice(test_shard, tiny_model_dir, tmp_path,
                                                                          counted_generate):
    challenger = _variant(tiny_model_dir, tmp_path / "night1", seed=1)
    champion = _variant(tiny_model_dir, tmp_path / "champion", seed=2)
    cache = tmp_path / "cache"
    first = _evaluate(test_shard, tiny_model_dir, challenger, champion, cache)
    assert first["hypotheses_decoded"] == 3 and len(counted_generate) > 0
    assert first["sample"]["full_split"] and first["sample"]["utterances"] == 15
    # the same night again: nothing is decoded, the figures are the same
    counted_generate.clear()
    again = _evaluate(test_shard, tiny_model_dir, challenger, champion, cache)
    assert counted_generate == [] and again["hypotheses_decoded"] == 0
    assert all(again[name]["cached"] for name in ("base", "finetuned", "champion"))
    for name in ("base", "finetuned", "champion"):
        assert again[name]["cer"] == first[name]["cer"]
        # decoding passes a clip: at least the greedy one, and kept with the cached hypotheses
        assert first[name]["mean_passes"] >= 1 and again[name]["mean_passes"] == first[name]["mean_passes"]
        assert [u[f"{name}_hypothesis"] for u in again["per_utterance"]] == \
            [u[f"{name}_hypothesis"] for u in first["per_utterance"]]
    # the next night: a new checkpoint; the base model and the champion cost nothing
    counted_generate.clear()
    night2 = _evaluate(test_shard, tiny_model_dir, _variant(tiny_model_dir, tmp_path / "night2", seed=3), champion,
                       cache)
    assert night2["hypotheses_decoded"] == 1 and counted_generate
    assert night2["base"]["cached"] and night2["champion"]["cached"] and not night2["finetuned"]["cached"]
    # a checkpoint rewritten in place (same path, other weights) is a different model
    _variant(tiny_model_dir, tmp_path / "champion", seed=4)
    assert _evaluate(test_shard, tiny_model_dir, challenger, champion, cache)["hypotheses_decoded"] == 1
    # another sample, or another policy, misses too
    assert _evaluate(test_shard, tiny_model_dir, challenger, champion, cache,
                     max_utterances=10, per_episode=4)["hypotheses_decoded"] == 3
    entries = list((cache / "hypotheses").glob("*.json"))
    assert entries and not list((cache / "hypotheses").glob(".*.tmp"))  # written atomically


def test_the_sample_is_bounded_stratified_stable_and_sticky():
    ids = list(range(1, 201))
    groups = [f"EP{i // 10:03d}" for i in range(200)]  # 20 episodes of 10 clips
    sample = stable_sample(ids, groups, max_utterances=40, per_episode=4)
    chosen = [groups[p] for p in sample.positions]
    assert len(sample.positions) == 40 and sample.episodes == 10 and max(chosen.count(g) for g in chosen) == 4
    assert not sample.full and sample.split_rows == 200
    # the same data gives the same sample, whatever the row order
    order = list(reversed(range(200)))
    reordered = stable_sample([ids[i] for i in order], [groups[i] for i in order], 40, 4)
    assert sorted(ids[order[p]] for p in reordered.positions) == sorted(ids[p] for p in sample.positions)
    # new episodes arrive: last night's sample stays as it is
    previous = [ids[p] for p in sample.positions]
    grown_ids, grown_groups = ids + list(range(201, 401)), groups + [f"NEW{i // 10:03d}" for i in range(200)]
    grown = stable_sample(grown_ids, grown_groups, 40, 4, previous=previous)
    assert sorted(grown_ids[p] for p in grown.positions) == sorted(previous)
    # rows that are gone are replaced from the ranking, the rest stays
    survivors = [i for i in grown_ids if i not in previous[:5]]
    topped = stable_sample(survivors, [grown_groups[grown_ids.index(i)] for i in survivors], 40, 4,
                           previous=previous)
    kept = {survivors[p] for p in topped.positions}
    assert len(kept) == 40 and set(previous[5:]) <= kept
    # rows regrouped since (a new group pattern puts all of them in one episode): the cap holds for sticky rows too
    merged = stable_sample(ids, ["ONE"] * 200, 40, 4, previous=previous)
    assert len(merged.positions) == 4 and {ids[p] for p in merged.positions} <= set(previous)
    # 0 or None: the whole split
    assert stable_sample(ids, groups, 0).full and len(stable_sample(ids, groups, None).positions) == 200


def _benchmark_folder(tmp_path, korean_clips, name="golden"):
    folder = tmp_path / name
    (folder / "audio").mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audio_path", "transcript"])
        for clip in korean_clips[20:24]:
            target = folder / "audio" / clip["audio_path"].rsplit("/", 1)[1]
            shutil.copy(clip["audio_path"], target)
            writer.writerow([f"audio/{target.name}", clip["transcript"]])  # relative to the folder
    return folder


def test_benchmark_sets_are_scored_for_every_model_and_cached(test_shard, tiny_model_dir, tmp_path, korean_clips,
                                                              counted_generate, monkeypatch):
    import os

    folder = _benchmark_folder(tmp_path, korean_clips)
    sets = parse_benchmark_sets(f"golden={folder}{os.pathsep}{_benchmark_folder(tmp_path, korean_clips, 'public')}")
    assert [name for name, _ in sets] == ["golden", "public"]
    loaded = [BenchmarkSet.load(name, path) for name, path in sets]
    (tmp_path / "report").mkdir()
    challenger = _variant(tiny_model_dir, tmp_path / "challenger", seed=5)
    champion = _variant(tiny_model_dir, tmp_path / "champion", seed=6)
    report = _evaluate(test_shard, tiny_model_dir, challenger, champion, tmp_path / "cache", benchmark_sets=loaded,
                       out_dir=tmp_path / "report")
    for name in ("golden", "public"):
        entry = report["benchmarks"][name]
        assert entry["set"]["utterances"] == 4
        assert {"base", "finetuned", "champion"} <= set(entry) and entry["finetuned"]["pairs"] == 4
    # identical audio in both sets: identical hypotheses, so identical rates
    assert report["benchmarks"]["golden"]["base"]["cer"] == report["benchmarks"]["public"]["base"]["cer"]
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Fixed benchmark sets" in html and "golden" in html and "public" in html
    assert "no reference information" in html
    saved = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert set(saved["benchmarks"]) == {"golden", "public"}
    # the fixed sets are cached like the test sample
    counted_generate.clear()
    again = _evaluate(test_shard, tiny_model_dir, challenger, champion, tmp_path / "cache", benchmark_sets=loaded)
    assert counted_generate == [] and again["benchmarks"]["golden"]["finetuned"]["cached"]


def test_benchmark_regressions_and_the_gate_setting(tmp_path):
    report = {"benchmarks": {
        "golden": {"finetuned": {"cer_normalized": 0.20}, "champion": {"cer_normalized": 0.18}},
        "public": {"finetuned": {"cer_normalized": 0.30}, "champion": {"cer_normalized": 0.298}},
        "new": {"finetuned": {"cer_normalized": 0.50}},  # no incumbent figure: nothing to regress from
    }}
    assert evaluation.benchmark_regressions(report, margin=0.005) == ["golden"]
    assert evaluation.benchmark_regressions(report, margin=0.001) == ["golden", "public"]
    # no champion (the first promotion, or after a retirement): the base model is the incumbent there too
    first = {"benchmarks": {"golden": {"finetuned": {"cer_normalized": 0.25}, "base": {"cer_normalized": 0.22}},
                            "public": {"finetuned": {"cer_normalized": 0.25}, "base": {"cer_normalized": 0.40}}}}
    assert evaluation.benchmark_regressions(first, margin=0.005) == ["golden"]
    assert evaluation.benchmark_regressions({}, margin=0.0) == []
    assert parse_gate(None) == "block" and parse_gate("WARN") == "warn"
    with pytest.raises(ConfigError, match="ASR_BENCHMARK_GATE"):
        parse_gate("maybe")
    with pytest.raises(ConfigError, match="ASR_BENCHMARK_SETS.*manifest.csv"):
        parse_benchmark_sets(str(tmp_path))
    (tmp_path / "manifest.csv").write_text("path,text\nx.wav,가\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="audio_path,transcript"):
        BenchmarkSet.load("x", tmp_path)
    (tmp_path / "manifest.csv").write_text("audio_path,transcript\nmissing.wav,가\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="missing.wav"):
        BenchmarkSet.load("x", tmp_path)


def test_gpu_hypotheses_decoded_without_cudnn_attention_are_cached_apart(monkeypatch):
    from asr_pipeline.core.cached_decoding import CTRANSLATE2, TRANSFORMERS, cache_placement

    monkeypatch.delenv("ASR_CUDNN_ATTENTION", raising=False)
    # GPU hypotheses cached before attention_without_cudnn were decoded with PyTorch's defaults (cuDNN first on an
    # H100): the new default is keyed apart, so a cached champion is never compared with a challenger decoded the
    # other way; a CPU and CTranslate2 have no cuDNN attention, and keep their keys
    assert cache_placement(TRANSFORMERS, "cuda/bfloat16") == "cuda/bfloat16/no-cudnn-attention"
    assert cache_placement(TRANSFORMERS, "cpu/float32") == "cpu/float32"
    assert cache_placement(CTRANSLATE2, "cuda/bfloat16") == "cuda/bfloat16"
    monkeypatch.setenv("ASR_CUDNN_ATTENTION", "1")  # the defaults again: the old key
    assert cache_placement(TRANSFORMERS, "cuda/bfloat16") == "cuda/bfloat16"


def test_the_sample_of_each_size_is_remembered_apart_and_an_earlier_file_is_read(tmp_path):
    """A whole-split evaluation (or one of another size, from the UI) must not make the nightly one draw a new
    sample: its base and champion hypotheses would all be decoded again (hours on a CPU)."""
    import json

    from asr_pipeline.core.eval_sample import SampleMemory

    memory = SampleMemory(tmp_path)
    memory.remember([3, 1, 2], 2000, 20)
    memory.remember(list(range(100)), None, 20)  # the whole split once
    assert memory.previous(2000, 20) == [3, 1, 2] and memory.previous(None, 20) == list(range(100))
    assert memory.previous(2000, 5) == []
    for size in range(SampleMemory.KEPT + 2):  # bounded: the least recently remembered sizes go
        memory.remember([size], size + 1, 1)
    assert memory.previous(2000, 20) == [] and memory.previous(SampleMemory.KEPT + 2, 1) == [SampleMemory.KEPT + 1]
    (tmp_path / "test_sample.json").write_text(json.dumps({"max_utterances": 2000, "per_episode": 20,
                                                           "ids": [7, 8]}))  # written by an earlier version
    assert SampleMemory(tmp_path).previous(2000, 20) == [7, 8]
    (tmp_path / "test_sample.json").write_text("[1, 2]")
    assert SampleMemory(tmp_path).previous(2000, 20) == []
