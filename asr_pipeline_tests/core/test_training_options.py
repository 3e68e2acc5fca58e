"""Training and decoding options on a real (tiny) Whisper and real featurized shards."""

import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.features import FeatureShard, featurize_shard
from asr_pipeline.core.model import load_processor, native_bf16
from asr_pipeline.core.training import TrainingSettings, train_whisper


@pytest.fixture(scope="module")
def shard(tmp_path_factory, korean_clips, tiny_model_dir):
    root = tmp_path_factory.mktemp("options")
    clips = korean_clips[:12]
    manifest = pd.DataFrame([{"id": i, "source_path": c["audio_path"], "audio_path": c["audio_path"],
                              "transcript": c["transcript"], "group": f"id:{i}",
                              "split": "valid" if i >= 10 else "train"} for i, c in enumerate(clips)])
    (root / "audio").mkdir(), (root / "features").mkdir()
    resample_manifest(manifest, root / "audio", emit=lambda _: None)
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(root / "audio"), root / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    return FeatureShard(root / "features")


def test_freeze_encoder_trains_the_decoder_only(shard, tiny_model_dir, tmp_path):
    settings = TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=3, eval_steps=3,
                                logging_steps=1, freeze_encoder=True)
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "frozen", settings, emit=lambda _: None)
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "frozen/model.safetensors"))
    encoder = [k for k in before if k.startswith("model.encoder.")]
    decoder = [k for k in before if k.startswith("model.decoder.layers.")]
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert summary["train_samples_per_s"] > 0 and summary["steps"] == 3


def test_gradient_checkpointing_and_ungrouped_batches_train_too(shard, tiny_model_dir, tmp_path):
    settings = TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=2, eval_steps=2,
                                logging_steps=1, gradient_checkpointing=True, group_by_length=False)
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "ckpt", settings, emit=lambda _: None)
    assert summary["steps"] == 2 and summary["train_loss"] > 0


def test_cpu_bf16_autocast_is_used_where_the_cpu_has_it_and_can_be_turned_off(shard, tiny_model_dir, tmp_path):
    from asr_pipeline.core.model import cpu_has_native_bf16, inference_dtype

    common = dict(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=2, eval_steps=2, logging_steps=1)
    fp32 = train_whisper(str(tiny_model_dir), [shard], tmp_path / "fp32", TrainingSettings(**common, cpu_bf16=False),
                         emit=lambda _: None)
    default = train_whisper(str(tiny_model_dir), [shard], tmp_path / "default", TrainingSettings(**common),
                            emit=lambda _: None)
    assert fp32["precision"] == "fp32"
    assert default["precision"] == ("bf16 autocast" if cpu_has_native_bf16() else "fp32")
    # the saved checkpoint stays float32 either way (autocast keeps float32 master weights)
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "default/model.safetensors")).values())
    assert inference_dtype(prefer_bf16=False) == torch.float32
    assert inference_dtype() == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


@pytest.fixture(scope="module")
def shard_without_valid(tmp_path_factory, korean_clips, tiny_model_dir):
    """12 clips in 4 episodes, all in the train split: ASR_SPLIT_RATIOS with no valid share, or bad luck."""
    root = tmp_path_factory.mktemp("no_valid")
    clips = korean_clips[:12]
    manifest = pd.DataFrame([{"id": i, "source_path": c["audio_path"], "audio_path": c["audio_path"],
                              "transcript": c["transcript"], "group": f"EP_{i // 3}", "split": "train"}
                             for i, c in enumerate(clips)])
    (root / "audio").mkdir(), (root / "features").mkdir()
    resample_manifest(manifest, root / "audio", emit=lambda _: None)
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(root / "audio"), root / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    return FeatureShard(root / "features")


def test_an_empty_valid_split_holds_out_train_episodes_and_selects_on_normalised_cer(shard_without_valid,
                                                                                    tiny_model_dir, tmp_path):
    settings = TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=2, eval_steps=1,
                                logging_steps=1)
    lines = []
    summary = train_whisper(str(tiny_model_dir), [shard_without_valid], tmp_path / "ckpt", settings,
                            emit=lines.append)
    assert summary["validation_source"] == "held-out train episodes" and summary["valid_episodes"] == 1
    assert summary["train_rows"] == 9 and summary["valid_rows_decoded"] == 3  # one whole episode held out
    assert any(line.startswith("WARNING: NO VALID SPLIT") for line in lines)
    assert "NO VALID SPLIT" in summary["validation_warning"]
    # the best checkpoint is chosen on the metric promotion uses
    assert summary["selection_metric"] == "cer_normalized"
    history = summary["valid_cer_history"]
    assert len(history) == 2 and all(h["cer_normalized"] is not None for h in history)
    assert summary["best_valid_cer_normalized"] == min(h["cer_normalized"] for h in history)


@pytest.mark.parametrize("cap, native", [
    (None, True), ("ALL", True), ("avx512_core_bf16", True), ("AVX512_CORE_AMX", True), ("AVX10_1_512", True),
    ("AVX2", False), ("avx512_core", False), ("SSE41", False), ("AVX2_VNNI", False)])
def test_bf16_is_native_only_where_onednn_may_use_the_bf16_instructions(cap, native):
    assert native_bf16(hardware=True, onednn_cap=cap, onednn_bf16=True) is native
    assert native_bf16(hardware=False, onednn_cap=cap, onednn_bf16=True) is False
    assert native_bf16(hardware=True, onednn_cap=cap, onednn_bf16=False) is False


def test_bf16_is_not_native_where_onednn_is_held_to_avx2():
    """ONEDNN_MAX_CPU_ISA=AVX2 (how an AVX2-only CPU is emulated on a newer one, benchmarks/packing_benchmark.py):
    bf16 matmuls would run several times slower than float32, so training and decoding stay in float32."""
    import subprocess
    import sys

    probe = "from asr_pipeline.core.model import cpu_has_native_bf16; print(cpu_has_native_bf16())"
    held = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                          capture_output=True, text=True, check=True)
    assert held.stdout.strip() == "False"


def test_gradient_checkpointing_goes_by_the_name_the_installed_transformers_takes(tmp_path, recwarn):
    """transformers 5.17 (the GPU image's) has only `gradient_checkpointing`; 5.2x renamed it
    `activation_checkpointing` and deprecates the old name. train_whisper failed on 5.17 until it asked."""
    import dataclasses

    from transformers import Seq2SeqTrainingArguments

    from asr_pipeline.core.trainer_hooks import checkpointing_argument

    @dataclasses.dataclass
    class OlderArguments:  # the shape of transformers 5.17's TrainingArguments, as far as this matters
        output_dir: str = ""
        gradient_checkpointing: bool = False

    assert checkpointing_argument(True, OlderArguments) == {"gradient_checkpointing": True}
    OlderArguments(**checkpointing_argument(True, OlderArguments))
    arguments = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                         **checkpointing_argument(True))
    assert arguments.gradient_checkpointing is True
    assert not [w for w in recwarn if "deprecated" in str(w.message) and "checkpointing" in str(w.message)]


def test_dataloader_workers_are_forked_once_not_every_epoch(shard, tiny_model_dir, tmp_path, monkeypatch):
    """With workers (the GPU default is 4), an epoch used to fork them again: a stall of about a second on each
    epoch's first step, which short epochs of packed windows meet often. They now persist across epochs."""
    from asr_pipeline.core import training

    pids = tmp_path / "collating_pids"

    class RecordingCollator(training.SpeechSeq2SeqCollator):
        def __call__(self, items):
            with open(pids, "a") as out:  # runs in the worker processes
                out.write(f"{os.getpid()}\n")
            return super().__call__(items)

    monkeypatch.setattr(training, "SpeechSeq2SeqCollator", RecordingCollator)
    settings = TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=9, eval_steps=9,
                                logging_steps=3, packing=False, dataloader_num_workers=2)
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "workers", settings, emit=lambda _: None)
    train_pids = set(pids.read_text().split()) - {str(os.getpid())}
    assert summary["epochs"] >= 2.5 and summary["steps"] == 9
    assert 2 <= len(train_pids) <= 2 + 2  # two training workers, and at most two for the one validation pass


def test_training_steps_run_without_cudnn_attention_and_the_summary_says_so(shard, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    # a packed run meets a new padded label length at nearly every step, and cuDNN's attention builds a plan for
    # each (docs/BENCHMARKS.md, "cuDNN attention"): the trainer runs with it out, and puts the flag back after
    from transformers import TrainerCallback

    from asr_pipeline.core import training

    monkeypatch.delenv("ASR_CUDNN_ATTENTION", raising=False)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    seen = []

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())

    original = training.shard_trainer_class

    def recording_trainer_class():
        class RecordingTrainer(original()):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(Recorder())

        return RecordingTrainer

    monkeypatch.setattr(training, "shard_trainer_class", recording_trainer_class)
    try:
        settings = TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=2, eval_steps=2,
                                    logging_steps=1)
        summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "attention", settings, emit=lambda _: None)
        assert seen == [False, False] and torch.backends.cuda.cudnn_sdp_enabled()
        assert summary["attention"] == "sdpa without cuDNN"
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
