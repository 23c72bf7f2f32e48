"""FoleyMMDiTTransformer: shapes at any duration, empty embeddings, aligned RoPE, text masking, batching,
serialization, gradient checkpointing, LoRA, cached conditions, presets, input validation.

Tiny configs of the real class; every parameter is re-drawn at random so that zero-initialised parts (adaLN-zero,
output conv, empty embeddings) cannot make an equality hold trivially.
"""

import pytest
import torch

from foley_toolkit import FoleyMMDiTConditions, FoleyMMDiTTransformer, sequence_lengths
from foley_toolkit.models.transformers.transformer_foley_mmdit import (
    FoleyAttnProcessor,
    aligned_rope_positions,
    conv1d_channel_last,
)
from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights


TEXT_DIM, CLIP_DIM, SYNC_DIM, LATENT_CHANNELS = 24, 20, 12, 8
ATOL = 1e-5


def tiny_config(**overrides):
    config = dict(
        in_channels=LATENT_CHANNELS,
        text_dim=TEXT_DIM,
        clip_dim=CLIP_DIM,
        sync_dim=SYNC_DIM,
        num_attention_heads=2,
        attention_head_dim=16,
        num_joint_layers=2,  # one full joint block + the last (context pre-only) one
        num_single_layers=1,
        max_seconds=32,
    )
    config.update(overrides)
    return config


def randomize_(model, std=0.1):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


def make_model(**overrides):
    return randomize_(FoleyMMDiTTransformer(**tiny_config(**overrides))).eval()


def lengths(duration):
    """Sequence lengths of a clip of `duration` seconds (from `audio_utils`, the one place that has them)."""
    n = sequence_lengths(duration)
    return {"audio": n["audio_tokens"], "clip": n["clip_frames"], "sync": n["sync_tokens"]}


def make_inputs(batch_size=2, duration=1.0, text_tokens=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = lengths(duration)
    return {
        "hidden_states": torch.randn(batch_size, LATENT_CHANNELS, n["audio"], generator=generator),
        "timestep": torch.rand(batch_size, generator=generator) * 1000,
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, TEXT_DIM, generator=generator),
        "clip_features": torch.randn(batch_size, n["clip"], CLIP_DIM, generator=generator),
        "sync_features": torch.randn(batch_size, n["sync"], SYNC_DIM, generator=generator),
        "seconds_start": torch.full((batch_size,), 2.0),
        "seconds_total": torch.full((batch_size,), 12.5),
    }


@torch.no_grad()
def run(model, **inputs):
    return model(**inputs).sample


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return make_model()


@pytest.mark.parametrize("duration", [1.0, 8.0, 10.3, 20.0])
def test_output_shape_matches_input_for_any_duration(model, duration):
    inputs = make_inputs(batch_size=1, duration=duration)
    output = run(model, **inputs)
    assert output.shape == inputs["hidden_states"].shape
    assert torch.isfinite(output).all()
    # Sequence lengths come from the inputs at call time: no fixed-length tables stored in the model.
    assert list(model.buffers()) == []


@pytest.mark.parametrize(
    "feature,drop",
    [("encoder_hidden_states", "drop_text"), ("clip_features", "drop_clip"), ("sync_features", "drop_sync")],
)
def test_missing_modality_equals_its_empty_embedding(model, feature, drop):
    inputs = make_inputs(batch_size=2, duration=8.0)
    full = run(model, **inputs)
    missing = run(model, **{**inputs, feature: None})
    dropped = run(model, **inputs, **{drop: torch.tensor([True, True])})
    torch.testing.assert_close(missing, dropped, atol=ATOL, rtol=0)
    assert (missing - full).abs().max() > 1e-2

    # Per-sample dropping (condition dropout, batched CFG): only the flagged sample becomes "missing".
    mixed = run(model, **inputs, **{drop: torch.tensor([False, True])})
    torch.testing.assert_close(mixed[0], full[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1], missing[1], atol=ATOL, rtol=0)


def test_default_condition_lengths_agree_with_sequence_lengths(model):
    # The empty CLIP/sync sequences of a missing modality have the lengths the pipeline feeds for a clip of the same
    # duration: `sequence_lengths`, with at least one CLIP frame and one Synchformer segment for very short clips.
    for num_audio_tokens in range(1, 1400):  # up to ~32 s
        expected = sequence_lengths(num_audio_tokens * 1024 / 44100)
        got = model.default_condition_lengths(num_audio_tokens)
        assert got["clip_frames"] == max(expected["clip_frames"], 1), num_audio_tokens
        assert got["sync_tokens"] == max(expected["sync_segments"], 1) * 8, num_audio_tokens


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_channel_last_conv_equals_conv1d(kernel_size):
    conv = torch.nn.Conv1d(12, 20, kernel_size, padding=kernel_size // 2)
    x = torch.randn(2, 33, 12)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(conv1d_channel_last(conv, x), expected, atol=1e-5, rtol=0)
    # A hooked (or LoRA-wrapped) conv runs through its own forward, so the hook is honoured.
    conv.register_forward_hook(lambda module, args, output: output * 2)
    torch.testing.assert_close(conv1d_channel_last(conv, x), 2 * expected, atol=1e-5, rtol=0)


def test_aligned_rope_gives_equal_phase_at_equal_time(model):
    # 8 s clip: 345 audio tokens, 64 CLIP frames; CLIP frame i covers the same fraction of the clip as audio
    # position i * 345 / 64.
    audio_positions, clip_positions = aligned_rope_positions(345, 64)
    torch.testing.assert_close(clip_positions / 345, torch.arange(64, dtype=torch.float64) / 64)
    assert torch.equal(audio_positions, torch.arange(345, dtype=torch.float64))

    # The model's tables: with 40 audio tokens and 8 CLIP frames, CLIP frame i and audio token 5 * i share a time
    # and must share cos/sin in every frequency; text rows are the identity rotation.
    num_audio, num_clip, num_text = 40, 8, 3
    cos, sin = model.get_rotary_embeddings(num_audio, num_clip, num_text)
    assert cos.shape == sin.shape == (num_audio + num_clip + num_text, model.config.attention_head_dim)
    for i in range(num_clip):
        torch.testing.assert_close(cos[num_audio + i], cos[5 * i], atol=1e-6, rtol=0)
        torch.testing.assert_close(sin[num_audio + i], sin[5 * i], atol=1e-6, rtol=0)
    assert torch.equal(cos[-num_text:], torch.ones(num_text, model.config.attention_head_dim))
    assert torch.equal(sin[-num_text:], torch.zeros(num_text, model.config.attention_head_dim))
    # Not trivially equal: consecutive audio tokens have different phases.
    assert (sin[1] - sin[0]).abs().max() > 1e-3


def test_padded_text_tokens_do_not_change_output(model):
    inputs = make_inputs(batch_size=2, duration=1.0, text_tokens=5)
    reference = run(model, **inputs)
    padding = torch.randn(2, 4, TEXT_DIM) * 10  # random values in the padded slots
    padded_text = torch.cat([inputs["encoder_hidden_states"], padding], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4] * 2)
    padded = run(model, **{**inputs, "encoder_hidden_states": padded_text}, encoder_attention_mask=mask)
    torch.testing.assert_close(padded, reference, atol=ATOL, rtol=0)
    # The padding is really seen when unmasked.
    unmasked = run(model, **{**inputs, "encoder_hidden_states": padded_text})
    assert (unmasked - reference).abs().max() > 1e-2


def test_batch_of_two_equals_two_single_calls(model):
    inputs = make_inputs(batch_size=2, duration=1.0)
    inputs["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    batched = run(model, **inputs)
    for i in range(2):
        single = run(model, **{k: v[i : i + 1] for k, v in inputs.items()})
        torch.testing.assert_close(batched[i : i + 1], single, atol=ATOL, rtol=0)


def test_seconds_defaults_and_effect(model):
    inputs = make_inputs(batch_size=1, duration=1.0)
    num_audio = inputs["hidden_states"].shape[-1]
    defaults = run(model, **{**inputs, "seconds_start": None, "seconds_total": None})
    explicit = run(model, **{**inputs, "seconds_start": 0.0, "seconds_total": num_audio * 1024 / 44100})
    torch.testing.assert_close(defaults, explicit, atol=ATOL, rtol=0)
    longer = run(model, **{**inputs, "seconds_total": 20.0})
    assert (longer - run(model, **inputs)).abs().max() > 1e-3


def test_save_and_load_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FoleyMMDiTTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.clip_dim == CLIP_DIM
    inputs = make_inputs(batch_size=1, duration=1.0)
    assert_same_weights(loaded, model)
    torch.testing.assert_close(run(loaded, **inputs), run(model, **inputs), atol=RELOAD_ATOL, rtol=RELOAD_RTOL)


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    model = make_model().train()
    inputs = make_inputs(batch_size=2, duration=1.0)
    inputs["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])

    def loss_and_grads():
        model.zero_grad()
        output = model(**inputs).sample
        output.square().mean().backward()
        return output.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    output, grads = loss_and_grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    output_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(output_ckpt, output, atol=1e-6, rtol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_every_parameter_gets_a_gradient_when_drop_flags_are_passed():
    # Training passes drop_* (condition dropout) at every step; then the empty embeddings are always in the graph
    # and DDP needs no find_unused_parameters.
    model = make_model().train()
    no_drop = torch.zeros(2, dtype=torch.bool)
    inputs = make_inputs(batch_size=2, duration=1.0)
    model(**inputs, drop_text=no_drop, drop_clip=no_drop, drop_sync=no_drop).sample.square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_lora_reaches_every_attention_layer_and_round_trips(tmp_path):
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    model = make_model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs(batch_size=1, duration=1.0)
    base = run(model, **inputs)

    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    wrapped = {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    num_attention_layers = model.config.num_joint_layers + model.config.num_single_layers
    assert len(wrapped) == 4 * num_attention_layers
    for prefix in ("transformer_blocks", "single_transformer_blocks"):
        for i in range(len(getattr(model, prefix))):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                assert f"{prefix}.{i}.attn.{proj}" in wrapped
    # lora_B starts at zero: output unchanged until it is trained (here: perturbed).
    torch.testing.assert_close(run(model, **inputs), base, atol=ATOL, rtol=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1)
    adapted = run(model, **inputs)
    assert (adapted - base).abs().max() > 1e-2
    # attention_kwargs={"scale": 0} switches the adapter off for one call.
    torch.testing.assert_close(run(model, **inputs, attention_kwargs={"scale": 0.0}), base, atol=ATOL, rtol=0)

    weight_name = "pytorch_lora_weights.safetensors"
    model.save_lora_adapter(tmp_path, weight_name=weight_name)
    assert (tmp_path / weight_name).is_file()
    fresh = FoleyMMDiTTransformer(**tiny_config()).eval()
    fresh.load_state_dict(base_state)
    fresh.load_lora_adapter(tmp_path, weight_name=weight_name, prefix=None)
    torch.testing.assert_close(run(fresh, **inputs), adapted, atol=ATOL, rtol=0)


def test_prepare_conditions_reuse_equals_plain_forward(model):
    inputs = make_inputs(batch_size=2, duration=8.0)
    inputs["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    latents, _ = inputs.pop("hidden_states"), inputs.pop("timestep")
    with torch.no_grad():
        conditions = model.prepare_conditions(latents.shape[-1], **inputs)
    assert isinstance(conditions, FoleyMMDiTConditions)
    for timestep in (torch.tensor([999.0, 999.0]), torch.tensor([500.0, 10.0])):
        cached = run(model, hidden_states=latents, timestep=timestep, conditions=conditions)
        plain = run(model, hidden_states=latents, timestep=timestep, **inputs)
        torch.testing.assert_close(cached, plain, atol=ATOL, rtol=0)

    # Batched CFG as the pipeline prepares it: one batch [uncond, cond] with per-sample drops, whose unconditional
    # half equals a batch-1 call without any condition (the learned empty embeddings at the default lengths).
    one = {k: v[:1] for k, v in inputs.items()}
    both = {k: v.repeat(2, *[1] * (v.ndim - 1)) for k, v in one.items()}
    drops = {name: torch.tensor([True, False]) for name in ("drop_text", "drop_clip", "drop_sync")}
    with torch.no_grad():
        cfg_conditions = model.prepare_conditions(latents.shape[-1], **both, **drops)
    timestep = torch.tensor([300.0, 300.0])
    cfg = run(model, hidden_states=latents[:1].repeat(2, 1, 1), timestep=timestep, conditions=cfg_conditions)
    cond = run(model, hidden_states=latents[:1], timestep=timestep[:1], **one)
    uncond = run(model, hidden_states=latents[:1], timestep=timestep[:1], seconds_start=2.0, seconds_total=12.5)
    torch.testing.assert_close(cfg[1:], cond, atol=ATOL, rtol=0)
    torch.testing.assert_close(cfg[:1], uncond, atol=ATOL, rtol=0)
    assert (cond - uncond).abs().max() > 1e-2


def test_attention_processors_are_swappable(model):
    processors = model.attn_processors
    assert len(processors) == model.config.num_joint_layers + model.config.num_single_layers

    class CountingProcessor(FoleyAttnProcessor):
        calls = 0

        def __call__(self, *args, **kwargs):
            CountingProcessor.calls += 1
            return super().__call__(*args, **kwargs)

    inputs = make_inputs(batch_size=1, duration=1.0)
    reference = run(model, **inputs)
    model.set_attn_processor(CountingProcessor())
    try:
        torch.testing.assert_close(run(model, **inputs), reference, atol=0, rtol=0)
        assert CountingProcessor.calls == len(processors)
    finally:
        model.set_attn_processor(processors)


def test_presets_land_within_ten_percent_of_paper_sizes():
    targets = {"small": 157e6, "kling-foley-1.5b": 1.5e9, "kling-foley-3b": 3e9, "kling-foley-6b": 6e9}
    heads = {"small": 7, "kling-foley-1.5b": 17, "kling-foley-3b": 23, "kling-foley-6b": 32}
    depth = {"small": 12, "kling-foley-1.5b": 23, "kling-foley-3b": 27, "kling-foley-6b": 27}
    for name, target in targets.items():
        config = FoleyMMDiTTransformer.preset_config(name)
        assert config["num_attention_heads"] == heads[name]
        assert config["num_joint_layers"] + config["num_single_layers"] == depth[name]
        widths = (config["in_channels"], config["text_dim"], config["clip_dim"], config["sync_dim"])
        assert widths == (40, 768, 1280, 768)
        with torch.device("meta"):
            preset_model = FoleyMMDiTTransformer(**config)
        assert preset_model.inner_dim == 64 * heads[name]
        count = sum(p.numel() for p in preset_model.parameters())
        assert abs(count - target) / target < 0.10, (name, count)
    with pytest.raises(ValueError, match="kling-foley-1.5b.*small|valid names"):
        FoleyMMDiTTransformer.preset_config("kling-foley-12b")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"hidden_states": torch.randn(1, LATENT_CHANNELS + 1, 44)}, "hidden_states"),
        ({"hidden_states": torch.randn(LATENT_CHANNELS, 44)}, "hidden_states"),
        ({"encoder_hidden_states": torch.randn(1, 7, TEXT_DIM + 1)}, "encoder_hidden_states"),
        ({"clip_features": torch.randn(1, 8, CLIP_DIM - 1)}, "clip_features"),
        ({"sync_features": torch.randn(1, 16)}, "sync_features"),
        ({"clip_features": torch.randn(2, 8, CLIP_DIM)}, "clip_features"),
        ({"encoder_attention_mask": torch.ones(1, 6)}, "encoder_attention_mask"),
        ({"drop_clip": torch.tensor([True, False, True])}, "drop_clip"),
        ({"timestep": torch.tensor([1.0, 2.0, 3.0])}, "timestep"),
        ({"seconds_total": torch.ones(2, 2)}, "seconds_total"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(model, overrides, match):
    inputs = make_inputs(batch_size=1, duration=1.0)
    with pytest.raises(ValueError, match=match):
        run(model, **{**inputs, **overrides})


def test_conditions_and_raw_condition_arguments_are_exclusive(model):
    inputs = make_inputs(batch_size=1, duration=1.0)
    with torch.no_grad():
        conditions = model.prepare_conditions(inputs["hidden_states"].shape[-1], batch_size=1)
    with pytest.raises(ValueError, match="conditions"):
        run(model, **inputs, conditions=conditions)
    with pytest.raises(ValueError, match="conditions"):
        run(model, hidden_states=torch.randn(1, LATENT_CHANNELS, 50), timestep=1.0, conditions=conditions)


# Config keys that earlier versions registered as copies of `audio_utils` rates, with the values those had.
OLD_RATE_KEYS = {
    "sample_rate": 44100,
    "samples_per_latent_frame": 1024,
    "clip_frame_rate": 8.0,
    "sync_frame_rate": 25.0,
    "sync_segment_frames": 16,
    "sync_segment_stride": 8,
}


def test_config_with_the_old_rate_keys_loads_and_computes_the_same(model, tmp_path):
    import json

    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    assert not OLD_RATE_KEYS.keys() & saved.keys()  # lengths are no longer transformer config
    config_path.write_text(json.dumps({**saved, **OLD_RATE_KEYS}))

    loaded = FoleyMMDiTTransformer.from_pretrained(tmp_path).eval()
    assert not OLD_RATE_KEYS.keys() & dict(loaded.config).keys()  # not carried into the next save either
    assert_same_weights(loaded, model)
    # Missing CLIP/sync and default seconds_total: exactly the paths where those rates used to be read.
    inputs = make_inputs(batch_size=1, duration=8.0)
    inputs.update(clip_features=None, sync_features=None, seconds_total=None)
    torch.testing.assert_close(run(loaded, **inputs), run(model, **inputs), atol=RELOAD_ATOL, rtol=RELOAD_RTOL)
    assert loaded.default_condition_lengths(345) == {"clip_frames": 64, "sync_tokens": 24 * 8}

    # A value the code can no longer honour is an error naming the key, not a silent change of lengths.
    config_path.write_text(json.dumps({**saved, **OLD_RATE_KEYS, "sync_segment_stride": 4}))
    with pytest.raises(ValueError, match="sync_segment_stride.*audio_utils"):
        FoleyMMDiTTransformer.from_pretrained(tmp_path)


def test_docstring_size_table_matches_the_parameter_counts():
    # The class docstring's preset table states each size; it must be the count of the model that preset builds.
    import re

    rows = re.findall(r"\| `([\w.-]+)`[^|]*\|[^|]*\|[^|]*\|[^|]*\| ([\d.]+)([MB]) \|", FoleyMMDiTTransformer.__doc__)
    assert {name for name, _, _ in rows} == {"small", "kling-foley-1.5b", "kling-foley-3b", "kling-foley-6b"}
    for name, number, unit in rows:
        with torch.device("meta"):
            preset_model = FoleyMMDiTTransformer(**FoleyMMDiTTransformer.preset_config(name))
        count = sum(p.numel() for p in preset_model.parameters())
        scale = 1e6 if unit == "M" else 1e9
        assert round(count / scale, len(number.partition(".")[2])) == float(number), (name, count)
    # "small" is the default config, so the default model has the stated size too.
    with torch.device("meta"):
        default_config = FoleyMMDiTTransformer().config
    assert all(default_config[key] == value for key, value in FoleyMMDiTTransformer.preset_config("small").items())


def _conditions_and_output(model, inputs, deduplicate):
    model.deduplicate_modulation = deduplicate
    latents, timestep = inputs["hidden_states"], inputs["timestep"]
    conditions_inputs = {k: v for k, v in inputs.items() if k not in ("hidden_states", "timestep")}
    try:
        with torch.no_grad():
            conditions = model.prepare_conditions(latents.shape[-1], **conditions_inputs)
            return conditions, model(latents, timestep, conditions=conditions).sample
    finally:
        model.deduplicate_modulation = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("duration", [2.7, 3.3])  # 117 and 143 audio frames (odd)
@pytest.mark.parametrize("batch", ["cfg_b2", "uncond_b1", "cond_b1"])
def test_deduplicated_modulation_equals_projecting_every_token(dtype, duration, batch):
    # The per-token adaLN projections computed once per distinct condition row must give the plain path's output
    # bit for bit (a linear layer acts row by row); the unconditional sample (sync dropped) has few distinct rows.
    torch.manual_seed(0)
    model = make_model().to(dtype)
    inputs = make_inputs(batch_size=2 if batch == "cfg_b2" else 1, duration=duration)
    inputs = {k: v.to(dtype) if v.is_floating_point() and k != "timestep" else v for k, v in inputs.items()}
    drop = {"cfg_b2": [False, True], "uncond_b1": [True], "cond_b1": [False]}[batch]
    for name in ("drop_text", "drop_clip", "drop_sync"):
        inputs[name] = torch.tensor(drop)

    calls = []
    hooks = [
        module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
        for block in [*model.transformer_blocks, *model.single_transformer_blocks]
        for module in [block.norm1.linear]
    ]
    try:
        conditions, fast = _conditions_and_output(model, inputs, deduplicate=True)
    finally:
        for hook in hooks:
            hook.remove()
    plain_conditions, plain = _conditions_and_output(model, inputs, deduplicate=False)

    assert plain_conditions.sync_adaln_rows is None and conditions.sync_adaln_rows is not None
    assert fast.dtype == dtype and torch.equal(fast, plain)
    features = conditions.sync_adaln_features
    assert torch.equal(conditions.sync_adaln_rows[conditions.sync_adaln_index], features)
    # Rows counted independently: the distinct rows of each sample's upsampled features.
    distinct = [torch.unique(features[b].float(), dim=0).shape[0] for b in range(len(drop))]
    assert conditions.sync_adaln_rows.shape[0] == sum(distinct)
    assert calls == [sum(distinct)] * len(calls) and len(calls) == 3  # every audio-stream adaLN saw only those
    for b, dropped in enumerate(drop):
        rows = int((conditions.sync_adaln_row_sample == b).sum())
        assert rows == distinct[b]
        if dropped:  # the empty sync embedding + 8 segment positions, plus rows at the input convolutions' edges
            assert rows <= 3 * model.config.sync_tokens_per_segment < features.shape[1]
        else:  # nearest-exact upsampling repeats each of the fewer sync tokens
            assert rows <= lengths(duration)["sync"] < features.shape[1]


def test_deduplicated_modulation_gives_the_plain_gradients():
    model = make_model().train()
    inputs = make_inputs(batch_size=2, duration=1.0)
    inputs["drop_sync"] = torch.tensor([False, True])

    def output_and_grads(deduplicate):
        model.deduplicate_modulation = deduplicate
        model.zero_grad()
        output = model(**inputs).sample
        output.square().mean().backward()
        return output.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    output, grads = output_and_grads(True)
    plain_output, plain_grads = output_and_grads(False)
    model.deduplicate_modulation = True
    assert torch.equal(output, plain_output)
    assert grads.keys() == plain_grads.keys() and len(grads) > 50
    for name in grads:  # the gather's backward sums the repeated rows' gradients in another order
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("duration", [2.7, 3.3])  # 117 and 143 audio frames (odd)
@pytest.mark.parametrize("rows", [[0, 0], [0, 1], [0, 1, 0, 1], [0, 0, 1]])
def test_identical_latent_samples_share_the_input_projection(dtype, duration, rows):
    # Samples with bit-identical latents (batched CFG: torch.cat([latents] * 2)) run the audio input projection once;
    # the output must equal running it on every sample, bit for bit, whatever the rest of each sample's conditions.
    torch.manual_seed(0)
    model = make_model().to(dtype)
    inputs = make_inputs(batch_size=len(rows), duration=duration)
    inputs = {k: v.to(dtype) if v.is_floating_point() and k != "timestep" else v for k, v in inputs.items()}
    distinct_latents = torch.randn(max(rows) + 1, *inputs["hidden_states"].shape[1:]).to(dtype)
    inputs["hidden_states"] = distinct_latents[rows]
    inputs["drop_text"] = torch.tensor([i % 2 == 1 for i in range(len(rows))])  # equal latents, other conditions

    projected = []
    hook = model.audio_input_proj.register_forward_hook(lambda m, args, out: projected.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            fast = model(**inputs).sample
            model.deduplicate_latents = False
            plain = model(**inputs).sample
    finally:
        model.deduplicate_latents = True
        hook.remove()
    assert projected == [len(set(rows)), len(rows)]
    assert fast.dtype == dtype and torch.equal(fast, plain)
    if rows == [0, 0]:  # same latents, different text: the two outputs still differ
        assert not torch.equal(fast[0], fast[1])


def test_identical_latent_samples_are_not_shared_under_autograd():
    # Training batches keep the plain path (no gather in the graph): the projection sees the whole batch.
    model = make_model().train()
    inputs = make_inputs(batch_size=2, duration=1.0)
    inputs["hidden_states"] = inputs["hidden_states"][:1].repeat(2, 1, 1)
    projected = []
    hook = model.audio_input_proj.register_forward_hook(lambda m, args, out: projected.append(args[0].shape[0]))
    try:
        model(**inputs).sample.square().mean().backward()
    finally:
        hook.remove()
    assert projected == [2]
