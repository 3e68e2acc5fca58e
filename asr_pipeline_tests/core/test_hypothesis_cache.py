"""The hypothesis cache on its own (core/hypothesis_cache.py) and the evaluation's files beside it: what a year of
nights leaves, a cache directory that cannot be written, two evaluations at once."""

import json

from asr_pipeline.core.decoding import DecodingPolicy

POLICY = DecodingPolicy(tokens_per_second=2.0, token_allowance=4, batch_size=8, temperatures=(0.0,))


def test_hypotheses_unused_for_a_month_are_removed_and_gone_files_forgotten(tmp_path):
    """A year of nights writes hundreds of entries; those still read (base, champion) stay."""
    import os
    import time

    from asr_pipeline.core.hypothesis_cache import UNUSED_DAYS, HypothesisCache

    cache = HypothesisCache(tmp_path / "cache")
    for key in ("base", "old_champion", "killed"):
        cache.put(key, {"texts": [key]})
    month = time.time() - UNUSED_DAYS * 86400 - 60
    for path in cache.hypotheses.iterdir():
        os.utime(path, (month, month))
    (cache.hypotheses / ".killed.json.0123abcd.tmp").write_text("{")
    os.utime(cache.hypotheses / ".killed.json.0123abcd.tmp", (month, month))
    assert cache.get("base") == {"texts": ["base"]}  # read tonight: its month starts again
    cache.put("challenger", {"texts": ["new"]})
    assert sorted(p.name for p in cache.hypotheses.iterdir()) == ["base.json", "challenger.json"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cache.model_fingerprint(str(model))
    (model / "config.json").unlink()
    cache.model_fingerprint(str(tmp_path / "cache"))  # another model: the digests are saved again
    assert str((model / "config.json").resolve()) not in (tmp_path / "cache" / "file_digests.json").read_text()


def test_a_cache_that_cannot_be_written_costs_a_decode_not_the_evaluation(tmp_path):
    """A read-only mount or a full disk under $ASR_HOME/cache: the models are fingerprinted, nothing is stored, and
    the decoder says so and goes on (the cache only ever saves work)."""
    from asr_pipeline.core.cached_decoding import TRANSFORMERS, CachedDecoder, DecodeJob
    from asr_pipeline.core.decoding import DecodeResult
    from asr_pipeline.core.eval_sample import SampleMemory
    from asr_pipeline.core.hypothesis_cache import HypothesisCache

    (tmp_path / "not_a_directory").write_text("")
    cache = HypothesisCache(tmp_path / "not_a_directory" / "cache")  # every write raises NotADirectoryError
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fingerprint = cache.model_fingerprint(str(model))
    assert fingerprint == cache.model_fingerprint(str(model))
    assert "NotADirectoryError" in cache.put("key", {"texts": ["x"]})
    assert cache.get("key") is None
    memory = SampleMemory(tmp_path / "not_a_directory" / "cache")  # the sticky sample lives there too
    memory.remember([1, 2, 3], 2000, 10)
    assert memory.previous(2000, 10) == []
    unreachable = SampleMemory(tmp_path / ("x" * 300))  # a name the file system refuses (ENAMETOOLONG), as EACCES
    unreachable.remember([1], 2000, 10)
    assert unreachable.previous(2000, 10) == []
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "test_sample.json").write_text('{"samples": {"2000/10": ["x", null]}}')
    assert SampleMemory(tmp_path / "damaged").previous(2000, 10) == []

    said, calls = [], []

    def loader(source):
        def decode(job):
            calls.append(job.label)
            return DecodeResult(texts=["안녕"] * job.count, temperatures=[0.0] * job.count,
                                silent=[False] * job.count, passes=[1] * job.count)
        return decode

    job = DecodeJob("test", 1, lambda i: None, lambda: [1.0], "sample")
    for _ in range(2):
        out = CachedDecoder(cache, "cpu/float32", POLICY, emit=said.append).run("base", str(model), TRANSFORMERS,
                                                                                  loader, [job])
        assert out["test"]["texts"] == ["안녕"] and not out["test"]["cached"]
    assert calls == ["test", "test"]
    assert any("hypotheses not cached (NotADirectoryError" in line for line in said)


def test_two_evaluations_saving_file_digests_keep_each_others(tmp_path):
    """Two evaluations fingerprinting different models at once: the later save keeps what the earlier one hashed."""
    from asr_pipeline.core.hypothesis_cache import HypothesisCache

    models = []
    for name in ("champion", "challenger"):
        model = tmp_path / name
        model.mkdir()
        (model / "model.safetensors").write_bytes(name.encode())
        models.append(model)
    first, second = HypothesisCache(tmp_path / "cache"), HypothesisCache(tmp_path / "cache")
    known = first._load_digests()  # the first evaluation read the file before the second one wrote it
    second.model_fingerprint(str(models[0]))
    known[str((models[1] / "model.safetensors").resolve())] = {"size": 10, "mtime_ns": 1, "sha256": "x"}
    first._save_digests(known)
    saved = json.loads((tmp_path / "cache" / "file_digests.json").read_text())
    assert {str((m / "model.safetensors").resolve()) for m in models} <= set(saved)
