"""Synchformer audio branch + offset classifier converter: equivalence with a reference forward written from the
published architecture (functional, on a state dict with the ORIGINAL key names), the av-benchmark audio front end,
DeSync windowing equal to av-benchmark's whole-clip slicing, the CLI, and refusals."""

import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foley_toolkit.conversion.synchformer import (
    convert_offset_classifier_state_dict,
    convert_synchformer_offset_classifier,
    extract_offset_classifier_state_dict,
    offset_classifier_config_from_state_dict,
)
from foley_toolkit.models.encoders.synchformer_offset_classifier import SynchformerOffsetClassifier

DIM, AST_LAYERS, AST_HEADS, AST_FF, LAYERS, HEADS, SEGMENTS, VDIM = 32, 2, 4, 48, 2, 4, 2, 24
MELS, SPEC_T, F_PATCHES, T_PATCHES, CLASSES = 128, 66, 12, 6, 21


# ----------------------------------------------------------------------------------------------------------
# A random state dict with the original names and shapes (Synchformer: `afeat_extractor` = AST + frequency
# aggregation layer, `vproj`/`aproj`, `transformer` = GlobalTransformer), and a reference forward written from
# the architecture: AST (pre-LN ViT, eps 1e-12), torch TransformerEncoderLayer semantics for the frequency pooling
# (norm_first, GELU, eps 1e-6), minGPT blocks (eps 1e-5) over [OFF; v; MOD; a] + position embedding.
# ----------------------------------------------------------------------------------------------------------


def _original_state_dict(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {f"{prefix}.weight": 1 + r(DIM), f"{prefix}.bias": r(DIM)}

    def lin(prefix, out_dim, in_dim):
        return {f"{prefix}.weight": r(out_dim, in_dim, scale=in_dim**-0.5), f"{prefix}.bias": r(out_dim)}

    sd = {"vfeat_extractor.cls_token": r(1, 1, VDIM)}  # the visual branch is someone else's: ignored
    a = "afeat_extractor.ast."
    sd.update(lin(a + "embeddings.patch_embeddings.projection", DIM, 256))
    sd[a + "embeddings.patch_embeddings.projection.weight"] = r(DIM, 1, 16, 16, scale=1 / 16)
    sd[a + "embeddings.cls_token"] = r(1, 1, DIM)
    sd[a + "embeddings.distillation_token"] = r(1, 1, DIM)
    sd[a + "embeddings.position_embeddings"] = r(1, 2 + F_PATCHES * T_PATCHES, DIM)
    for i in range(AST_LAYERS):
        p = f"{a}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd.update(lin(p + f"attention.attention.{name}", DIM, DIM))
        sd.update(lin(p + "attention.output.dense", DIM, DIM))
        sd.update(lin(p + "intermediate.dense", AST_FF, DIM))
        sd.update(lin(p + "output.dense", DIM, AST_FF))
        sd.update(ln(p + "layernorm_before"))
        sd.update(ln(p + "layernorm_after"))
    sd.update(ln(a + "layernorm"))
    q = "afeat_extractor.freq_attn_agg."
    sd[q + "cls_token"] = r(1, 1, DIM)
    sd[q + "self_attn.in_proj_weight"] = r(3 * DIM, DIM, scale=DIM**-0.5)
    sd[q + "self_attn.in_proj_bias"] = r(3 * DIM)
    sd.update(lin(q + "self_attn.out_proj", DIM, DIM))
    sd.update(lin(q + "linear1", AST_FF, DIM))
    sd.update(lin(q + "linear2", DIM, AST_FF))
    sd.update(ln(q + "norm1"))
    sd.update(ln(q + "norm2"))
    sd.update(lin("vproj", DIM, VDIM))
    sd.update(lin("aproj", DIM, DIM))
    t = "transformer."
    sd.update(ln(t + "vis_in_lnorm"))
    sd.update(ln(t + "aud_in_lnorm"))
    sd[t + "OFF_tok"] = r(1, 1, DIM)
    sd[t + "MOD_tok"] = r(1, 1, DIM)
    sd[t + "pos_emb_cfg.pos_emb"] = r(1, 2 + SEGMENTS * (8 + T_PATCHES), DIM)
    for i in range(LAYERS):
        p = f"{t}blocks.{i}."
        sd.update(ln(p + "ln1"))
        sd.update(ln(p + "ln2"))
        for name in ("key", "query", "value", "proj"):
            sd.update(lin(p + f"attn.{name}", DIM, DIM))
        sd.update(lin(p + "mlp.0", 4 * DIM, DIM))
        sd.update(lin(p + "mlp.2", DIM, 4 * DIM))
    sd.update(ln(t + "ln_f"))
    sd.update(lin(t + "off_head", CLASSES, DIM))
    return sd


def _lin(sd, p, x):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _ln(sd, p, x, eps):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[p + ".weight"] + sd[p + ".bias"]


def _mha(q, k, v, heads):
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(b, n, d)


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def _reference_audio_features(sd, spec):
    """`spec` (B, S, F, T) -> (B, S, t, D): Synchformer's `extract_afeats` (AST per segment + frequency pooling)."""
    b, s = spec.shape[:2]
    a = "afeat_extractor.ast."
    x = spec.reshape(b * s, MELS, SPEC_T).transpose(1, 2)  # AST input (BS, T, F)
    x = F.conv2d(x.unsqueeze(1).transpose(2, 3), sd[a + "embeddings.patch_embeddings.projection.weight"],
                 sd[a + "embeddings.patch_embeddings.projection.bias"], stride=(10, 10))  # fmt: skip
    x = x.flatten(2).transpose(1, 2)
    n = x.shape[0]
    x = torch.cat([sd[a + "embeddings.cls_token"].expand(n, -1, -1),
                   sd[a + "embeddings.distillation_token"].expand(n, -1, -1), x], 1)  # fmt: skip
    x = x + sd[a + "embeddings.position_embeddings"]
    for i in range(AST_LAYERS):
        p = f"{a}encoder.layer.{i}."
        h = _ln(sd, p + "layernorm_before", x, 1e-12)
        att = _mha(*(_lin(sd, p + f"attention.attention.{m}", h) for m in ("query", "key", "value")), AST_HEADS)
        x = x + _lin(sd, p + "attention.output.dense", att)
        h = _gelu(_lin(sd, p + "intermediate.dense", _ln(sd, p + "layernorm_after", x, 1e-12)))
        x = x + _lin(sd, p + "output.dense", h)
    x = _ln(sd, a + "layernorm", x, 1e-12)[:, 2:]
    x = x.permute(0, 2, 1).reshape(n, DIM, F_PATCHES, T_PATCHES)  # (BS, D, f, t)
    x = x.permute(0, 3, 2, 1).reshape(n * T_PATCHES, F_PATCHES, DIM)  # frequency groups
    q = "afeat_extractor.freq_attn_agg."
    x = torch.cat([sd[q + "cls_token"].expand(x.shape[0], -1, -1), x], 1)
    h = _ln(sd, q + "norm1", x, 1e-6)
    wq, wk, wv = sd[q + "self_attn.in_proj_weight"].chunk(3)
    bq, bk, bv = sd[q + "self_attn.in_proj_bias"].chunk(3)
    att = _mha(h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv, AST_HEADS)
    x = x + _lin(sd, q + "self_attn.out_proj", att)
    x = x + _lin(sd, q + "linear2", _gelu(_lin(sd, q + "linear1", _ln(sd, q + "norm2", x, 1e-6))))
    return x[:, 0].reshape(b, s, T_PATCHES, DIM)


def _reference_logits(sd, visual, audio_features):
    """Synchformer's `compare_v_a`: `visual` (B, S, 8, Dv), `audio_features` (B, S, t, D) -> (B, 21)."""
    b = visual.shape[0]
    v = _lin(sd, "vproj", visual).reshape(b, -1, DIM)
    a = _lin(sd, "aproj", audio_features).reshape(b, -1, DIM)
    t = "transformer."
    v, a = _ln(sd, t + "vis_in_lnorm", v, 1e-5), _ln(sd, t + "aud_in_lnorm", a, 1e-5)
    x = torch.cat([sd[t + "OFF_tok"].expand(b, -1, -1), v, sd[t + "MOD_tok"].expand(b, -1, -1), a], 1)
    x = x + sd[t + "pos_emb_cfg.pos_emb"]
    for i in range(LAYERS):
        p = f"{t}blocks.{i}."
        h = _ln(sd, p + "ln1", x, 1e-5)
        x = x + _lin(sd, p + "attn.proj", _mha(*(_lin(sd, p + f"attn.{m}", h) for m in ("query", "key", "value")), HEADS))
        x = x + _lin(sd, p + "mlp.2", _gelu(_lin(sd, p + "mlp.0", _ln(sd, p + "ln2", x, 1e-5))))
    return _lin(sd, t + "off_head", _ln(sd, t + "ln_f", x, 1e-5)[:, 0])


def _reference_spectrogram(wave: np.ndarray) -> torch.Tensor:
    """av-benchmark's `encode_audio_with_sync` front end, written with librosa: 10240-sample segments every 5120,
    power mel (n_fft 1024, hann 400, hop 160, centred reflect, 128 HTK bands, no norm), log(+1e-6), zero-pad to 66,
    (x + 4.2677393) / (2 * 4.5689974)."""
    import librosa

    segments = [wave[i * 5120 : i * 5120 + 10240] for i in range((len(wave) - 10240) // 5120 + 1)]
    out = []
    for segment in segments:
        mel = librosa.feature.melspectrogram(
            y=segment.astype(np.float64), sr=16000, n_fft=1024, hop_length=160, win_length=400, window="hann",
            center=True, pad_mode="reflect", power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None,
        )  # fmt: skip
        mel = np.log(mel + 1e-6)
        mel = np.pad(mel, ((0, 0), (0, 66 - mel.shape[1])))
        out.append((mel - -4.2677393) / (2 * 4.5689974))
    return torch.from_numpy(np.stack(out)).float()[None]


@pytest.fixture(scope="module")
def original():
    return _original_state_dict()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, original):
    path = tmp_path_factory.mktemp("ckpt") / "synchformer_state_dict.pth"
    torch.save(original, path)
    out = tmp_path_factory.mktemp("conv") / "sync_classifier"
    convert_synchformer_offset_classifier(path, out, num_attention_heads=HEADS, audio_num_attention_heads=AST_HEADS)
    return SynchformerOffsetClassifier.from_pretrained(out).eval(), out


def test_converted_classifier_matches_reference_forward(original, converted):
    model, out = converted
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert model.config.window_segments == SEGMENTS and model.config.num_classes == CLASSES
    g = torch.Generator().manual_seed(1)
    spec = torch.randn(2, SEGMENTS, MELS, SPEC_T, generator=g)
    visual = torch.randn(2, SEGMENTS, 8, VDIM, generator=g)
    with torch.no_grad():
        ref_audio = _reference_audio_features(original, spec)
        audio = model.encode_audio(spec)
        logits = model.classify(visual.reshape(2, SEGMENTS * 8, VDIM), audio)
    ref_logits = _reference_logits(original, visual, ref_audio)
    torch.testing.assert_close(audio, ref_audio, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert ref_logits.std() > 0.1  # not a degenerate comparison
    assert not torch.equal(logits.argmax(-1), torch.zeros(2, dtype=torch.long)) or logits.std() > 0.1


def test_front_end_matches_av_benchmark_spectrogram(converted):
    model, _ = converted
    wave = np.random.default_rng(0).standard_normal(10240 + 5120 * (SEGMENTS - 1)).astype(np.float32) * 0.1
    ours = model.spectrogram(torch.from_numpy(wave)[None])
    ref = _reference_spectrogram(wave)
    assert ours.shape == ref.shape == (1, SEGMENTS, 128, 66)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    assert torch.all(ours[..., -1] == (0 - -4.2677393) / (2 * 4.5689974))  # the zero-padded 66th frame


def test_full_forward_is_front_end_then_reference(original, converted):
    model, _ = converted
    g = torch.Generator().manual_seed(2)
    wave = torch.randn(1, model.window_samples, generator=g) * 0.1
    visual = torch.randn(1, SEGMENTS * 8, VDIM, generator=g)
    with torch.no_grad():
        logits = model(visual, wave)
    ref = _reference_logits(original, visual.view(1, SEGMENTS, 8, VDIM),
                            _reference_audio_features(original, _reference_spectrogram(wave[0].numpy())))  # fmt: skip
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert model.offset_grid[0] == -2.0 and model.offset_grid[10] == 0.0 and model.offset_grid[-1] == 2.0
    assert np.allclose(np.diff(model.offset_grid), 0.2)


def test_public_shapes_give_the_public_config():
    # The public model: AST position embedding (1, 74, 768) = 2 + 12 x 6 patches; classifier positions
    # (1, 198, 768) = 2 + 14 x (8 + 6) (av-benchmark GlobalTransformer block_shape [198]); 21 classes.
    shapes = {
        "afeat_extractor.ast.embeddings.patch_embeddings.projection.weight": (768, 1, 16, 16),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "vproj.weight": (768, 768),
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768),
        "transformer.off_head.weight": (21, 768),
    }
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    for i in range(12):
        state[f"afeat_extractor.ast.encoder.layer.{i}.intermediate.dense.weight"] = torch.empty(3072, 768, device="meta")
    for i in range(3):
        state[f"transformer.blocks.{i}.ln1.weight"] = torch.empty(768, device="meta")
    config = offset_classifier_config_from_state_dict(state)
    with torch.device("meta"):
        model = SynchformerOffsetClassifier(**config)
    # The class defaults are the public model: every value read from the shapes equals its default.
    defaults = {k: p.default for k, p in inspect.signature(SynchformerOffsetClassifier.__init__).parameters.items()}
    assert {k: defaults[k] for k in config} == config
    assert config["window_segments"] == 14 and config["spec_frames"] == 66 and config["audio_num_attention_heads"] == 12
    assert model.pos_embed.shape == (1, 198, 768) and model.audio_pos_embed.shape == (1, 74, 768)
    assert model.window_samples == 76800  # 4.8 s at 16 kHz


def test_desync_windows_equal_av_benchmark_whole_clip_slicing(converted):
    """av-benchmark encodes every segment of the whole clip and classifies segments [:W] and [-W:]; the scorer cuts
    the audio window and encodes it: the logits must be the same."""
    from foley_toolkit import SynchformerEncoder
    from foley_toolkit.evaluation.extractors.synchformer_desync import SynchformerOffsetDeSync, desync_clip_offsets
    from foley_toolkit.models.encoders import tiny_synchformer_config

    model, _ = converted
    encoder = SynchformerEncoder(**{**tiny_synchformer_config(), "hidden_size": VDIM, "num_attention_heads": 4}).eval()
    scorer = SynchformerOffsetDeSync(encoder, model)
    num_segments = 5
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(num_segments * 8, VDIM, generator=g)
    audio = torch.randn(10240 + 5120 * (num_segments - 1), generator=g) * 0.1
    seen = []

    def classify(visual, wave):
        seen.append(scorer.classify(visual, wave))
        return seen[-1]

    offsets = desync_clip_offsets(classify, tokens, audio, 16000, scorer.offset_grid, scorer.window_segments)
    with torch.no_grad():
        features = model.encode_audio(model.spectrogram(audio[None]))  # (1, 5, t, D): the whole clip
        first = model.classify(tokens[None, : SEGMENTS * 8], features[:, :SEGMENTS])
        last = model.classify(tokens[None, -SEGMENTS * 8 :], features[:, -SEGMENTS:])
    torch.testing.assert_close(seen[0], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[1], last, atol=1e-5, rtol=1e-5)
    assert offsets == [model.offset_grid[int(first.argmax())], model.offset_grid[int(last.argmax())]]


def test_cli_convert_writes_both_branches(tmp_path, capsys, original):
    from test_conversion_synchformer import _original_checkpoint, _tiny_reference

    from foley_toolkit import SynchformerEncoder
    from foley_toolkit.cli import main

    visual = _original_checkpoint(_tiny_reference())["model"]
    state = {k: v for k, v in original.items() if not k.startswith("vfeat_extractor.")}
    state.update({k: v for k, v in visual.items() if k.startswith("vfeat_extractor.")})
    torch.save(state, tmp_path / "synchformer_state_dict.pth")
    args = ["convert", "synchformer", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "enc")]
    assert main(args + ["--head-out", str(tmp_path / "head")]) == 0
    assert "SynchformerOffsetClassifier" in capsys.readouterr().out
    encoder = SynchformerEncoder.from_pretrained(tmp_path / "enc")
    head = SynchformerOffsetClassifier.from_pretrained(tmp_path / "head")
    assert head.config.visual_dim == 24 and encoder.config.hidden_size == 32  # the tiny reference's widths
    # heads are not in the weights: the CLI uses the public model's (classifier 8, AST hidden // 64)
    assert head.config.num_attention_heads == 8 and head.config.audio_num_attention_heads == 1
    torch.testing.assert_close(head.audio_proj.weight, original["aproj.weight"], atol=0, rtol=0)
    wq, wk, wv = original["afeat_extractor.freq_attn_agg.self_attn.in_proj_weight"].chunk(3)
    torch.testing.assert_close(head.freq_pool.layer.attn.to_k.weight, wk, atol=0, rtol=0)
    # a non-empty --head-out is refused before anything is written; --head-out belongs to synchformer only
    assert main(["convert", "synchformer", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "enc2"),
                 "--head-out", str(tmp_path / "head")]) == 2  # fmt: skip
    assert not (tmp_path / "enc2").exists()
    assert main(args[:1] + ["t5"] + args[2:-1] + [str(tmp_path / "t5"), "--head-out", str(tmp_path / "h")]) == 2
    assert "--head-out is only read by `synchformer`" in capsys.readouterr().err


def test_refuses_missing_unexpected_and_misshapen_keys(tmp_path, original):
    bad = dict(original)
    del bad["transformer.blocks.1.attn.query.weight"]
    bad["transformer.extra_head.weight"] = torch.zeros(3)
    bad["aproj.weight"] = torch.zeros(DIM, DIM + 1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as error:
        convert_synchformer_offset_classifier(path, num_attention_heads=HEADS, audio_num_attention_heads=AST_HEADS)
    message = str(error.value)
    assert "missing keys transformer.blocks.1.attn.query.weight (-> layers.1.attn.to_q.weight)" in message
    assert "unexpected keys transformer.extra_head.weight" in message
    assert "aproj.weight (-> audio_proj.weight): checkpoint (32, 33) vs model (32, 32)" in message
    converted_keys, _, unexpected = convert_offset_classifier_state_dict(extract_offset_classifier_state_dict(original))
    assert unexpected == [] and "freq_pool.layer.attn.to_v.bias" in converted_keys


def test_refuses_checkpoint_without_audio_branch(tmp_path, original):
    path = tmp_path / "visual_only.pth"
    torch.save({k: v for k, v in original.items() if k.startswith("vfeat_extractor.")}, path)
    with pytest.raises(ValueError, match="no Synchformer audio branch and offset head"):
        convert_synchformer_offset_classifier(path)
    with pytest.raises(FileNotFoundError):
        convert_synchformer_offset_classifier(tmp_path / "missing.pth")


def test_wrong_window_lengths_are_refused(converted):
    model, _ = converted
    with pytest.raises(ValueError, match="waveform"):
        model(torch.zeros(1, SEGMENTS * 8, VDIM), torch.zeros(1, model.window_samples - 1))
    with pytest.raises(ValueError, match="fixed window"):
        model.classify(torch.zeros(1, 3 * 8, VDIM), torch.zeros(1, SEGMENTS, T_PATCHES, DIM))


def test_set_attention_backend_runs_that_backend(converted, monkeypatch):
    """Every attention of the classifier (AST layers, frequency pooling, classifier layers) goes through diffusers'
    dispatcher: the backend set on the model is the one that runs, with the same logits."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    model, _ = converted
    g = torch.Generator().manual_seed(4)
    spec = torch.randn(1, SEGMENTS, MELS, SPEC_T, generator=g)
    visual = torch.randn(1, SEGMENTS * 8, VDIM, generator=g)
    with torch.no_grad():
        reference = model.classify(visual, model.encode_audio(spec))
    active = _AttentionBackendRegistry._active_backend
    calls = []
    original = _AttentionBackendRegistry._backends[AttentionBackendName("_native_math")]

    def wrapper(**kwargs):
        calls.append(tuple(kwargs["query"].shape))
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, AttentionBackendName("_native_math"), wrapper)
    try:
        model.set_attention_backend("_native_math")
        with torch.no_grad():
            logits = model.classify(visual, model.encode_audio(spec))
    finally:
        model.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)
    # (batch, length, heads, head_dim): AST layers over every segment, the pooling over every (segment, time patch)
    # group of frequency tokens, then the classifier over [OFF; visual; MOD; audio].
    expected = [(SEGMENTS, 2 + F_PATCHES * T_PATCHES, AST_HEADS, DIM // AST_HEADS)] * AST_LAYERS
    expected += [(SEGMENTS * T_PATCHES, 1 + F_PATCHES, AST_HEADS, DIM // AST_HEADS)]
    expected += [(1, 2 + SEGMENTS * (8 + T_PATCHES), HEADS, DIM // HEADS)] * LAYERS
    assert calls == expected
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
