"""A tiny offline stand-in for the base Whisper model.

The stand-in exists because this project must run end to end where the Hugging Face hub is unreachable.
It is a randomly initialised 2-layer Whisper with a byte-level BPE tokenizer trained on the demo corpus
and the real Whisper special tokens; its error rates mean nothing and every report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

PLACEHOLDER_NAME = "tiny-random-whisper-ko"
PLACEHOLDER_WARNING = (
    "BASE MODEL IS A PLACEHOLDER: no pretrained Whisper could be reached, so this run used a tiny randomly "
    "initialised Whisper built offline. Its CER/WER MEAN NOTHING. Set ASR_BASE_MODEL to a local Whisper "
    "directory (e.g. one built by shared/tools/whisper_base_offline/build.sh) or a hub id on a machine with "
    "internet access for real figures."
)


def build_tiny_whisper(out_dir: Path, corpus: Iterable[str] = (), seed: int = 0, vocab_size: int = 1200) -> Path:
    """A randomly initialised tiny Whisper + a BPE tokenizer trained on `corpus`, saved like a hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    from asr_pipeline.core.storage import publish, staging_dir

    out_dir = Path(out_dir)
    texts = list(corpus) or _fallback_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    bpe.train_from_iterator(texts, trainer=trainer)
    # Whisper's special tokens, in Whisper's order, after the text vocabulary.
    specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"])
    bpe.add_special_tokens(specials)
    ids = {token: bpe.token_to_id(token) for token in specials}
    bpe.post_processor = processors.TemplateProcessing(
        single="<|startoftranscript|> <|notimestamps|> $A <|endoftext|>",
        special_tokens=[(t, ids[t]) for t in ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>")],
    )

    staged = staging_dir(out_dir)
    bpe.save(str(staged / "tokenizer.json"))
    (staged / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_prefix_space": False,
        "model_max_length": 448,
    }))
    tokenizer = WhisperTokenizer.from_pretrained(str(staged))
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, begin_suppress_tokens=[eot], suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        begin_suppress_tokens=[eot], suppress_tokens=[], is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        forced_decoder_ids=None,
    )
    model.save_pretrained(staged)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(staged)
    (staged / "PLACEHOLDER.txt").write_text(PLACEHOLDER_WARNING + "\n")
    publish(staged, out_dir)
    return out_dir


def _fallback_corpus() -> list[str]:
    from asr_pipeline.core.synth import demo_sentences

    return demo_sentences(200)
