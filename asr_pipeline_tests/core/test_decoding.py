"""Decoding as deployed (issue 12 point 1) and the device/dtype choice (point 7)."""

import inspect

import numpy as np
import pytest
import torch

from asr_pipeline.core import transformers_decoding
from asr_pipeline.core.decoding import GREEDY_ONLY, Candidate, DecodingPolicy, duration_batches, guarded_decode
from asr_pipeline.core.transformers_decoding import transcribe_audio, transcribe_features
from asr_pipeline.core.model import inference_device_and_dtype, load_model, load_processor


def test_the_token_budget_comes_from_the_audio_and_never_exceeds_444():
    policy = DecodingPolicy()
    assert policy.budget(0.5) == 6 + 16 and policy.budget(10.0) == 120 + 16
    assert policy.budget(30.0) == 376 and DecodingPolicy(tokens_per_second=20).budget(30.0) == 444
    with pytest.raises(ValueError, match="444"):
        DecodingPolicy(max_new_tokens=445)
    # longest audio first, each batch the budget of its longest clip; nothing else is consulted
    batches = list(duration_batches([1.0, 9.0, 3.0, 5.0, 2.0], DecodingPolicy(batch_size=2)))
    assert batches == [([1, 3], policy.budget(9.0)), ([2, 4], policy.budget(3.0)), ([0], policy.budget(1.0))]
    # no reference information can reach the decoder: neither entry point takes any
    for function in (transcribe_features, guarded_decode, transformers_decoding.TransformersRuntime.decode):
        assert not {"expected_tokens", "references", "labels"} & set(inspect.signature(function).parameters)


class ScriptedRuntime:
    """Candidates by (utterance, temperature): exercises the guard logic exactly, with no model in the way."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        self.calls.append((tuple(chosen), temperature, max_new_tokens))
        return [Candidate(*self.script[i][temperature], temperature) for i in chosen]


def test_temperature_fallback_no_speech_and_the_best_of_failed_results():
    loop = "그리고 " * 40  # compresses far more than 2.4: a repetition loop
    script = {
        0: {0.0: ("오늘 날씨", -0.2, 0.01)},  # confident: kept greedy
        1: {0.0: (loop, -0.1, 0.01), 0.2: ("비가 옵니다", -0.4, 0.01)},  # loop -> fallback repairs it
        2: {0.0: ("음", -2.0, 0.9)},  # unlikely and probably silence: "", no fallback
        3: {t: (("엉뚱한 말 " * 2) + str(t), lp, 0.0) for t, lp in  # never passes: most likely one is kept
            zip(DecodingPolicy().temperatures, (-1.5, -1.2, -3.0, -4.0, -5.0, -6.0))},
    }
    runtime = ScriptedRuntime(script)
    result = guarded_decode(runtime, [1.0, 2.0, 3.0, 4.0], DecodingPolicy(batch_size=4), emit=lambda _: None)
    assert result.texts == ["오늘 날씨", "비가 옵니다", "", "엉뚱한 말 엉뚱한 말 0.2"]
    assert result.temperatures == [0.0, 0.2, 0.0, 0.2] and result.silent == [False, False, True, False]
    # only the failing utterances are decoded again, at the next temperature, within the audio budget
    assert runtime.calls[0] == ((3, 2, 1, 0), 0.0, DecodingPolicy().budget(4.0))
    assert runtime.calls[1] == ((3, 1), 0.2, DecodingPolicy().budget(4.0))
    assert all(call[0] == (3,) for call in runtime.calls[2:]) and len(runtime.calls) == 6
    assert result.passes == [1, 2, 1, 6]
    assert result.stats() == {"fallback_share": 0.5, "no_speech_share": 0.25, "mean_passes": 2.5}
    # greedy only: the first result stands
    greedy = guarded_decode(ScriptedRuntime(script), [1.0, 2.0, 3.0, 4.0], GREEDY_ONLY, emit=lambda _: None)
    assert greedy.texts[1] == loop.strip() or greedy.texts[1] == loop


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))


def test_a_real_whisper_decodes_within_the_audio_budget_with_the_guards(tiny, korean_clips, monkeypatch):
    from asr_pipeline.core.audio import load_16k

    model, processor = tiny
    clips = [load_16k(c["audio_path"]) for c in korean_clips[:6]]
    # the random tiny Whisper babbles until it is stopped: the audio budget is what stops it
    policy = DecodingPolicy(tokens_per_second=2.0, token_allowance=4, batch_size=4)
    calls = []
    generate = transformers_decoding.TransformersRuntime._generate

    def counting_generate(self, hidden, cache, temperature, max_new_tokens, generator):
        calls.append(max_new_tokens)
        return generate(self, hidden, cache, temperature, max_new_tokens, generator)

    monkeypatch.setattr(transformers_decoding.TransformersRuntime, "_generate", counting_generate)
    texts = transcribe_audio(model, processor, clips, policy, emit=lambda _: None)
    budgets = {policy.budget(max(len(c) for c in group) / 16_000) for group in
               ([clips[i] for i in idx] for idx, _ in duration_batches([len(c) / 16_000 for c in clips], policy))}
    assert set(calls) <= budgets and len(texts) == 6
    for text in texts:
        assert len(processor.tokenizer(text, add_special_tokens=False).input_ids) <= max(budgets) + 2
    # the random model's mean log-prob is far below -1: every temperature is tried before the best is kept
    assert len(calls) > len(budgets)


def test_transformers_statistics_match_ctranslate2(tiny_model_dir, korean_clips, tmp_path):
    """The CTranslate2 path runs the same policy and reads the same statistics as transformers."""
    from asr_pipeline.core.audio import load_16k
    from asr_pipeline.core.export import CTranslate2Runtime, export_ctranslate2, load_ctranslate2

    model, processor = load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))
    extractor = processor.feature_extractor
    features = [extractor(load_16k(c["audio_path"]), sampling_rate=16_000, return_tensors="np").input_features[0]
                for c in korean_clips[:3]]
    runtime = transformers_decoding.TransformersRuntime(model, processor, features.__getitem__)
    hf = runtime.decode([0, 1, 2], 0.0, 12, 1, 0)
    export = export_ctranslate2(tiny_model_dir, tmp_path / "ct2", quantization="float32")
    ct2 = CTranslate2Runtime(load_ctranslate2(export, compute_type="float32"), processor.tokenizer,
                             features.__getitem__).decode([0, 1, 2], 0.0, 12, 1, 0)
    assert [c.text for c in hf] == [c.text for c in ct2]
    assert [c.no_speech_prob for c in hf] == pytest.approx([c.no_speech_prob for c in ct2], abs=0.01)
    # (the mean log-probabilities agree within 0.01 on whisper-base, test_whisper_base.py; this random model's texts
    # are all cut by the budget, where the two runtimes' scores differ by a few tenths)
    assert all(c.avg_logprob < -1.0 for c in hf + ct2)


def test_device_and_dtype_choice_without_a_gpu():
    choose = inference_device_and_dtype
    assert choose(True, cuda_available=True, cuda_bf16=True, cpu_bf16=False) == ("cuda", "bfloat16")
    assert choose(True, cuda_available=True, cuda_bf16=False, cpu_bf16=True) == ("cuda", "float16")
    assert choose(False, cuda_available=True, cuda_bf16=True, cpu_bf16=True) == ("cuda", "float32")
    assert choose(True, cuda_available=False, cuda_bf16=False, cpu_bf16=True) == ("cpu", "bfloat16")
    assert choose(True, cuda_available=False, cuda_bf16=False, cpu_bf16=False) == ("cpu", "float32")
    assert choose(False, cuda_available=False, cuda_bf16=False, cpu_bf16=True) == ("cpu", "float32")
    from asr_pipeline.core.export import ct2_device_and_compute_type

    assert ct2_device_and_compute_type(1) == ("cuda", "int8_float16")
    assert ct2_device_and_compute_type(0) == ("cpu", "int8")


def test_load_model_places_and_casts_the_decoding_copy(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16)
    parameter = next(model.parameters())
    assert parameter.device.type == "cpu" and parameter.dtype == torch.bfloat16
    # a bf16 copy still decodes (the statistics are computed in float32)
    features = np.zeros((1, 80, 3000), dtype=np.float32)
    out = transformers_decoding.TransformersRuntime(model, load_processor(str(tiny_model_dir)), features.__getitem__)
    assert len(out.decode([0], 0.0, 4, 1, 0)) == 1


def test_transcribe_places_the_model_and_decodes_under_the_policy(tiny_model_dir, korean_clips, capsys, monkeypatch):
    from asr_pipeline import cli

    monkeypatch.setenv("ASR_HOME", str(tiny_model_dir.parent / "home"))
    cli.main(["transcribe", korean_clips[0]["audio_path"], "--model", str(tiny_model_dir), "--float32"])
    captured = capsys.readouterr()
    assert "decoding on cpu in float32" in captured.err
    assert captured.out.startswith(korean_clips[0]["audio_path"] + "\t")


def test_evaluation_settings_are_validated_with_the_variable_name(monkeypatch, tmp_path):
    from asr_pipeline.core.errors import ConfigError
    from asr_pipeline.defs.common.resources import settings_from_environment

    monkeypatch.setenv("ASR_HOME", str(tmp_path))
    assert settings_from_environment().eval_max_utterances == 2000
    monkeypatch.setenv("ASR_EVAL_MAX_UTTERANCES", "0")
    assert settings_from_environment().eval_max_utterances == 0
    for name, value in (("ASR_EVAL_MAX_UTTERANCES", "-1"), ("ASR_BENCHMARK_GATE", "sometimes"),
                        ("ASR_BENCHMARK_SETS", str(tmp_path / "nowhere")), ("ASR_CUDNN_ATTENTION", "true")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            settings_from_environment()
        monkeypatch.delenv(name)


def test_the_step_by_step_decoder_gives_generates_greedy_tokens_and_its_own_statistics(tiny, korean_clips):
    """The runtime's own loop (rows leave the batch when they end, statistics from the same passes) picks the tokens
    transformers' generate picks, with Whisper's suppression rules, and scores them as a teacher-forced pass does."""
    from transformers.modeling_outputs import BaseModelOutput

    from asr_pipeline.core.audio import load_16k
    from asr_pipeline.core.model import LANGUAGE, TASK

    model, processor = tiny
    extractor = processor.feature_extractor
    features = [extractor(load_16k(c["audio_path"]), sampling_rate=16_000, return_tensors="np").input_features[0]
                for c in korean_clips[:3]]
    runtime = transformers_decoding.TransformersRuntime(model, processor, features.__getitem__)
    hidden, cross = runtime._encode([0, 1, 2])
    with torch.inference_mode():
        tokens, sums, no_speech, ended = runtime._generate(hidden, runtime._cache(cross), 0.0, 12, None)
        reference = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), language=LANGUAGE,
                                   task=TASK, max_new_tokens=12, do_sample=False, num_beams=1,
                                   force_unique_generate_call=True)
    for row, expected in enumerate(reference.tolist()):
        expected = expected[len(runtime.prompt):]
        expected = expected[: expected.index(runtime.eot) + 1] if runtime.eot in expected else expected
        assert tokens[row] + ([runtime.eot] if ended[row] else []) == expected
        # the statistics: a teacher-forced pass over prompt + tokens gives the same log-probabilities
        ids = torch.tensor([runtime.prompt + expected])
        with torch.inference_mode():
            logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[row:row + 1]),
                           decoder_input_ids=ids).logits.float()[0]
        logprobs = logits.log_softmax(dim=-1)
        start = len(runtime.prompt) - 1
        assert sums[row] == pytest.approx(sum(float(logprobs[start + k, t]) for k, t in enumerate(expected)), abs=1e-3)
        assert no_speech[row] == pytest.approx(float(logprobs[0, runtime.no_speech].exp()), abs=1e-5)


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny, korean_clips, monkeypatch):
    """A row that ends early is dropped from the batch and the cache; the rows still decoding get the tokens they get
    decoded alone."""
    from asr_pipeline.core.audio import load_16k

    model, processor = tiny
    extractor = processor.feature_extractor
    features = [extractor(load_16k(c["audio_path"]), sampling_rate=16_000, return_tensors="np").input_features[0]
                for c in korean_clips[:3]]
    runtime = transformers_decoding.TransformersRuntime(model, processor, features.__getitem__)
    choose = transformers_decoding.TransformersRuntime._choose
    steps = []

    def ending_row_one_at_step_three(self, logits, temperature, generator, first):
        chosen = choose(self, logits, temperature, generator, first)
        steps.append(chosen.shape[0])
        if len(steps) == 3:
            chosen[1] = self.eot  # the second row ends after two tokens
        return chosen

    with torch.inference_mode():
        alone = [runtime._generate(*_one(runtime, i), 0.0, 8, None)[0][0] for i in range(3)]
    monkeypatch.setattr(transformers_decoding.TransformersRuntime, "_choose", ending_row_one_at_step_three)
    hidden, cross = runtime._encode([0, 1, 2])
    with torch.inference_mode():
        tokens, _, _, ended = runtime._generate(hidden, runtime._cache(cross), 0.0, 8, None)
    assert ended == [False, True, False] and tokens[1] == alone[1][:2]
    assert tokens[0] == alone[0] and tokens[2] == alone[2]
    assert steps[:3] == [3, 3, 3] and set(steps[3:]) == {2}  # two rows decode on after the third step


def _one(runtime, i):
    hidden, cross = runtime._encode([i])
    return hidden, runtime._cache(cross)

