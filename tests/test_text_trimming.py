"""KlingFoleyPipeline trims the T5 padding before the transformer (`trim_text_padding`): the transformer sees only as
many text tokens as the longest real prompt or negative prompt of the batch (at least one), and the audio equals
the padded path's within float32 rounding. Tiny real components, 2 flow steps, a 1 s video."""

import pytest
import torch

from foley_toolkit import KlingFoleyPipeline

from utils import get_dummy_components, make_test_video


# Trimmed and padded paths differ only in how many masked (exactly zero-weight) keys the joint attention's
# softmax and matmul reduce over: float32 rounding, measured max |diff| ~1e-7 on waveforms of peak ~0.3.
ATOL = 1e-5
RTOL = 1e-4
MAX_SEQUENCE_LENGTH = 128
SHORT_PROMPT = "a dog barks"
LONG_PROMPT = "glass shatters on a tiled floor while heavy rain falls on a tin roof and a car passes by"
NEGATIVE_PROMPT = "music"


@pytest.fixture(scope="module")
def pipe():
    return KlingFoleyPipeline(**get_dummy_components()).to("cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("videos") / "clip.mp4", duration=1.0, fps=25)


def num_tokens(pipe, text: str) -> int:
    return len(pipe.tokenizer(text).input_ids)  # real tokens, EOS included


def run(pipe, monkeypatch, trim: bool, **kwargs):
    """Generate with trimming on or off; returns the audio and the text lengths the transformer saw per step."""
    seen = []
    forward = pipe.transformer.forward

    def recording_forward(*args, conditions=None, **kw):
        seen.append(conditions.text_hidden_states.shape[1])
        return forward(*args, conditions=conditions, **kw)

    with monkeypatch.context() as m:
        m.setattr(pipe.transformer, "forward", recording_forward)
        if not trim:
            m.setattr(KlingFoleyPipeline, "trim_text_padding", staticmethod(lambda *tensors: tensors))
        kwargs = {"num_inference_steps": 2, "output_type": "pt", **kwargs}
        kwargs["generator"] = torch.Generator().manual_seed(0)
        audio = pipe(max_sequence_length=MAX_SEQUENCE_LENGTH, **kwargs).audios
    return audio, seen


def assert_close(trimmed, padded):
    assert trimmed.shape == padded.shape
    assert float(padded.abs().max()) > 1e-3  # not silence
    torch.testing.assert_close(trimmed, padded, atol=ATOL, rtol=RTOL)


def test_two_prompts_with_guidance_equal_padded_path(pipe, video, monkeypatch):
    prompts = [SHORT_PROMPT, LONG_PROMPT]
    lengths = [num_tokens(pipe, p) for p in prompts + [NEGATIVE_PROMPT]]
    assert lengths[0] < lengths[1] < MAX_SEQUENCE_LENGTH

    kwargs = {"video": video, "prompt": prompts, "negative_prompt": NEGATIVE_PROMPT, "guidance_scale": 4.5}
    trimmed, seen_trimmed = run(pipe, monkeypatch, trim=True, **kwargs)
    padded, seen_padded = run(pipe, monkeypatch, trim=False, **kwargs)

    assert seen_padded == [MAX_SEQUENCE_LENGTH] * 2
    assert seen_trimmed == [max(lengths)] * 2
    assert trimmed.shape[0] == 2
    assert_close(trimmed, padded)


def test_negative_prompt_longer_than_prompts_sets_length(pipe, video, monkeypatch):
    kwargs = {"video": video, "prompt": [SHORT_PROMPT, "rain"], "negative_prompt": LONG_PROMPT}
    trimmed, seen = run(pipe, monkeypatch, trim=True, **kwargs)
    padded, _ = run(pipe, monkeypatch, trim=False, **kwargs)
    assert seen == [num_tokens(pipe, LONG_PROMPT)] * 2
    assert_close(trimmed, padded)


def test_empty_prompt_keeps_one_token(pipe, video, monkeypatch):
    trimmed, seen = run(pipe, monkeypatch, trim=True, video=video, prompt="")
    padded, _ = run(pipe, monkeypatch, trim=False, video=video, prompt="")
    assert seen == [1, 1]
    assert_close(trimmed, padded)


def test_precomputed_embeds_are_trimmed(pipe, video, monkeypatch):
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        [SHORT_PROMPT, LONG_PROMPT], negative_prompt=[NEGATIVE_PROMPT] * 2, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    assert embeds.shape[1] == MAX_SEQUENCE_LENGTH  # encode_prompt itself still pads (training caches rely on it)
    kwargs = {
        "video": video,
        "prompt_embeds": embeds,
        "prompt_attention_mask": mask,
        "negative_prompt_embeds": negative,
        "negative_prompt_attention_mask": negative_mask,
    }
    trimmed, seen = run(pipe, monkeypatch, trim=True, **kwargs)
    padded, _ = run(pipe, monkeypatch, trim=False, **kwargs)
    assert seen == [num_tokens(pipe, LONG_PROMPT)] * 2
    assert_close(trimmed, padded)
    from_text, _ = run(
        pipe, monkeypatch, trim=True, video=video, prompt=[SHORT_PROMPT, LONG_PROMPT], negative_prompt=NEGATIVE_PROMPT
    )
    torch.testing.assert_close(trimmed, from_text, atol=ATOL, rtol=RTOL)


def test_trim_text_padding_masks():
    embeds = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    negative = torch.randn(2, 6, 4)
    negative_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    out = KlingFoleyPipeline.trim_text_padding(embeds, mask, negative, negative_mask)
    assert [tuple(x.shape) for x in out] == [(2, 4, 4), (2, 4), (2, 4, 4), (2, 4)]
    torch.testing.assert_close(out[0], embeds[:, :4], atol=0, rtol=0)
    torch.testing.assert_close(out[3], negative_mask[:, :4], atol=0, rtol=0)

    # Left padding: the real tokens sit at the end, nothing can be dropped.
    left = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    assert KlingFoleyPipeline.trim_text_padding(embeds, left)[0].shape[1] == 6

    # All padding (or no prompt at all): one token stays; no negative prompt passes through as None.
    out = KlingFoleyPipeline.trim_text_padding(embeds, torch.zeros(2, 6, dtype=torch.long))
    assert out[0].shape == (2, 1, 4) and out[2] is None and out[3] is None
    assert KlingFoleyPipeline.trim_text_padding(None, None, negative, negative_mask)[2].shape[1] == 4
