"""Training and decoding run without cuDNN's attention (model.attention_without_cudnn): on a GPU it builds a plan for
every new attention shape (docs/BENCHMARKS.md, "cuDNN attention"). The flags are the same on a CPU build."""

import numpy as np
import pytest
import torch

from asr_pipeline.core import transformers_decoding
from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.model import attention_description, attention_without_cudnn, load_model, load_processor


@pytest.fixture
def cudnn_flag():
    """The process-wide cuDNN attention flag, put back as it was whatever a test does to it."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.parametrize("before", [True, False])
def test_cudnn_is_out_of_attention_only_inside_training_and_decoding(cudnn_flag, before, monkeypatch):
    # on a GPU, cuDNN's attention builds a plan for every new shape: 40-90 ms a decoder step the first time, and
    # decoding or packed training meets a new shape at nearly every step (docs/BENCHMARKS.md, "cuDNN attention");
    # the flags are the same on a CPU build, so the scoping is checked here
    monkeypatch.delenv("ASR_CUDNN_ATTENTION", raising=False)
    torch.backends.cuda.enable_cudnn_sdp(before)
    with attention_without_cudnn():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # the rest of the process is left as it was
    assert attention_description() == "sdpa without cuDNN"
    monkeypatch.setenv("ASR_CUDNN_ATTENTION", "1")  # the way back, named in the summary and the report
    with attention_without_cudnn():
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert attention_description() == "sdpa, cuDNN allowed (ASR_CUDNN_ATTENTION=1)"
    monkeypatch.setenv("ASR_CUDNN_ATTENTION", "yes")
    with pytest.raises(ConfigError, match="ASR_CUDNN_ATTENTION must be 0 or 1"):
        attention_description()


def test_cudnn_stays_out_until_the_last_training_or_decode_in_any_thread_leaves(cudnn_flag, monkeypatch):
    import threading

    monkeypatch.delenv("ASR_CUDNN_ATTENTION", raising=False)
    torch.backends.cuda.enable_cudnn_sdp(True)
    first_in, second_in, first_out, second_may_leave = (threading.Event() for _ in range(4))
    seen = {}

    def first():
        with attention_without_cudnn():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with attention_without_cudnn():
            second_in.set()
            first_out.wait(5)  # the first has left: the second still decodes without cuDNN
            seen["second, after the first left"] = torch.backends.cuda.cudnn_sdp_enabled()
            second_may_leave.wait(5)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_out.wait(5)
    second_may_leave.set()
    for thread in threads:
        thread.join(5)
    assert seen == {"second, after the first left": False}
    assert torch.backends.cuda.cudnn_sdp_enabled()  # put back when the last one left
    with pytest.raises(RuntimeError):  # a training or decode that fails puts it back too
        with attention_without_cudnn():
            raise RuntimeError("out of memory")
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_every_decoder_step_runs_without_cudnn_attention(tiny_model_dir, cudnn_flag, monkeypatch):
    monkeypatch.delenv("ASR_CUDNN_ATTENTION", raising=False)
    torch.backends.cuda.enable_cudnn_sdp(True)
    model = load_model(str(tiny_model_dir))
    runtime = transformers_decoding.TransformersRuntime(model, load_processor(str(tiny_model_dir)),
                                                        np.zeros((2, 80, 3000), dtype=np.float32).__getitem__)
    seen = []
    forward = runtime._forward
    monkeypatch.setattr(runtime, "_forward", lambda *a: seen.append(torch.backends.cuda.cudnn_sdp_enabled())
                        or forward(*a))
    runtime.decode([0, 1], 0.0, 4, 1, 0)
    runtime.decode([0, 1], 0.6, 4, 1, 0)
    assert len(seen) >= 2 and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()
