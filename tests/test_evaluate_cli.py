"""PANNs CNN14 extractor (random weights of the real class), the embedding cache and `foley-toolkit evaluate`."""

import json
import math

import numpy as np
import pytest
import torch

from foley_toolkit.audio_utils import save_audio
from foley_toolkit.evaluation.distribution_metrics import (
    frechet_distance,
    inception_score,
    kl_divergence,
    mean_cosine_similarity,
)
from foley_toolkit.evaluation.embedding_cache import EmbeddingCache
from foley_toolkit.evaluation.extractors import Cnn14, PANNsExtractor
from foley_toolkit.synthetic import generate_clip, write_clip
from tests.utils import assert_cli_error


@pytest.fixture(scope="module")
def cnn14_weights(tmp_path_factory):
    """A random-weight CNN14 (real architecture, 527 classes) saved as the public `.pth` layout and as a folder."""
    torch.manual_seed(0)
    model = Cnn14().eval()
    # Random BatchNorm statistics so that the embedding depends on the input in a non-trivial way.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    root = tmp_path_factory.mktemp("cnn14")
    pth = root / "Cnn14_16k_random.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, pth)
    model.save_pretrained(root / "converted")
    return model, pth, root / "converted"


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """pred/ and ref/ with 4 synthetic clips each (different seeds), 1.5 s stereo 44.1 kHz wav."""
    root = tmp_path_factory.mktemp("clips")
    for folder, offset in (("pred", 0), ("ref", 100)):
        for index in range(4):
            clip = generate_clip(seed=offset + index, duration=1.5, fps=25, width=32, height=32)
            save_audio(root / folder / f"clip{index}.wav", clip.audio, clip.sample_rate)
            if folder == "ref" and index < 2:  # the source videos of the first two clips (DeSync)
                (root / "videos").mkdir(exist_ok=True)
                write_clip(clip, root / "videos" / f"clip{index}.mp4")
    return root / "pred", root / "ref"


class CountingExtractor(PANNsExtractor):
    calls = 0

    def _forward(self, waveform):
        type(self).calls += 1
        return super()._forward(waveform)


def test_prepare_resamples_mixes_and_crops_in_one_place(cnn14_weights):
    extractor = PANNsExtractor(cnn14_weights[0], max_seconds=1.0)
    t = np.arange(2 * 44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t) + 0.3, np.sin(2 * np.pi * 1000 * t) + 0.3]).astype(np.float32)
    waveform = extractor.prepare(stereo, 44100)
    assert waveform.shape == (1, 16000)  # 16 kHz, cropped to 1 s
    assert abs(float(waveform.mean())) < 1e-3  # DC removed
    spectrum = np.abs(np.fft.rfft(waveform[0].numpy()))
    assert np.argmax(spectrum) == 1000  # 1 kHz bin at 1 Hz resolution: the rate was converted, not relabelled
    with pytest.raises(ValueError, match="at least"):
        extractor.prepare(np.zeros(1000, np.float32), 16000)
    with pytest.raises(ValueError, match="channels"):
        extractor.prepare(np.zeros((1, 2, 3), np.float32), 16000)


def test_cnn14_outputs_and_weight_loading(cnn14_weights):
    model, pth, converted = cnn14_weights
    extractor = PANNsExtractor(model)
    audio = torch.randn(2, 24000) * 0.1
    outputs = extractor.extract(audio, 24000)
    assert outputs["embedding"].shape == (2048,) and outputs["logits"].shape == (527,)
    assert (outputs["embedding"] >= 0).all() and outputs["embedding"].abs().sum() > 0  # ReLU of fc1
    torch.testing.assert_close(extractor.classify(audio, 24000), torch.sigmoid(outputs["logits"]))
    torch.testing.assert_close(extractor.embed(audio, 24000), outputs["embedding"])
    other = extractor.extract(torch.randn(2, 24000) * 0.1, 24000)
    assert not torch.allclose(other["embedding"], outputs["embedding"])
    for source in (pth, converted):
        loaded = PANNsExtractor.from_pretrained(source)
        assert loaded.cache_key == extractor.cache_key
        reloaded = loaded.extract(audio, 24000)
        torch.testing.assert_close(reloaded["embedding"], outputs["embedding"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded["logits"], outputs["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a PANNs CNN14 checkpoint"):
        torch.save({"model": {"x": torch.zeros(1)}}, converted.parent / "bad.pth")
        PANNsExtractor.from_pretrained(converted.parent / "bad.pth")


def test_cnn14_matches_the_public_definition(cnn14_weights, tmp_path, monkeypatch):
    # panns_inference downloads its label file at import time: give it one so the import stays offline.
    labels = tmp_path / "panns_data" / "class_labels_indices.csv"
    labels.parent.mkdir()
    labels.write_text("index,mid,display_name\n0,/m/09x0r,Speech\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    models = pytest.importorskip("panns_inference.models")
    model = cnn14_weights[0]
    reference = models.Cnn14(
        sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527
    ).eval()
    reference.load_state_dict(model.state_dict(), strict=True)  # same parameter names and shapes
    waveform = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        ours, theirs = model(waveform), reference(waveform)
    torch.testing.assert_close(ours["embedding"], theirs["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["clipwise_output"], theirs["clipwise_output"], rtol=1e-5, atol=1e-6)


def test_cache_second_run_calls_no_extractor_and_a_changed_file_is_recomputed(cnn14_weights, clip_dirs, tmp_path):
    extractor = CountingExtractor(cnn14_weights[0])
    files = sorted(clip_dirs[0].glob("*.wav"))
    cache = EmbeddingCache(tmp_path / "cache")
    CountingExtractor.calls = 0
    first = [cache.extract_file(path, extractor) for path in files]
    assert CountingExtractor.calls == len(files) and cache.misses == len(files)

    second_cache = EmbeddingCache(tmp_path / "cache")  # a new run
    second = [second_cache.extract_file(path, extractor) for path in files]
    assert CountingExtractor.calls == len(files)  # no extractor call
    assert second_cache.hits == len(files) and second_cache.misses == 0
    for a, b in zip(first, second):
        torch.testing.assert_close(a["embedding"], b["embedding"], rtol=0, atol=0)

    # Rewrite one file with other audio: only that entry misses, and its outputs change.
    clip = generate_clip(seed=999, duration=1.5, fps=25, width=32, height=32)
    changed = tmp_path / "changed.wav"
    changed.write_bytes(files[0].read_bytes())
    hit = second_cache.extract_file(changed, extractor)  # same content, other name: a hit
    assert CountingExtractor.calls == len(files)
    save_audio(changed, clip.audio, clip.sample_rate)
    recomputed = second_cache.extract_file(changed, extractor)
    assert CountingExtractor.calls == len(files) + 1
    assert not torch.allclose(recomputed["embedding"], hit["embedding"])

    # Another crop length is another extractor key: no stale reuse.
    shorter = CountingExtractor(cnn14_weights[0], max_seconds=1.0)
    assert shorter.cache_key != extractor.cache_key
    second_cache.extract_file(files[0], shorter)
    assert CountingExtractor.calls == len(files) + 2


def test_evaluate_end_to_end(cnn14_weights, clip_dirs, tmp_path, capsys):
    from foley_toolkit.cli import main

    _, pth, _ = cnn14_weights
    pred, ref = clip_dirs
    out = tmp_path / "results.json"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--panns-weights", str(pth)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--no-progress", "--num-workers", "2"]
    assert main(argv) == 0  # decoding in 2 DataLoader worker processes
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert sorted(report) == sorted(
        ["metrics", "num_pairs", "pred", "ref", "audio_seconds", "extractors", "cache", "conventions"]
    )
    assert sorted(report["metrics"]) == ["FD_PANNs", "IS", "IS_std", "KL_PANNs"]
    assert report["num_pairs"] == 4 and report["cache"]["misses"] == 8
    # The table lists the paper's columns in Table 1 order.
    header = printed.splitlines()[1].split()
    assert header == ["FD_PANNs", "KL_PANNs", "IS"]

    # The numbers are the metrics of the extractor's outputs (recomputed here without the CLI).
    extractor = PANNsExtractor.from_pretrained(pth)
    names = sorted(p.name for p in pred.glob("*.wav"))
    gen = [extractor.extract_prepared(extractor.load(pred / n)) for n in names]
    refs = [extractor.extract_prepared(extractor.load(ref / n)) for n in names]
    stack = lambda outs, key: torch.stack([o[key] for o in outs])  # noqa: E731
    metrics = report["metrics"]
    assert metrics["FD_PANNs"] == pytest.approx(frechet_distance(stack(gen, "embedding"), stack(refs, "embedding")), rel=1e-4)
    assert metrics["KL_PANNs"] == pytest.approx(kl_divergence(stack(gen, "logits"), stack(refs, "logits")), rel=1e-4)
    assert metrics["IS"] == pytest.approx(inception_score(stack(gen, "logits"), splits=4)[0], rel=1e-4)
    assert metrics["KL_PANNs"] > 0 and metrics["IS"] >= 1.0 and math.isfinite(metrics["FD_PANNs"])

    # Second run: everything from the cache. A folder against itself: FD 0, KL 0.
    out2 = tmp_path / "self.json"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(pred), "--panns-weights", str(pth), "--metrics", "fd_panns"]
    argv += ["kl_panns", "--cache-dir", str(tmp_path / "cache"), "--json", str(out2), "--no-progress"]
    assert main(argv) == 0
    self_report = json.loads(out2.read_text())
    assert self_report["cache"] == {"dir": str(tmp_path / "cache"), "hits": 8, "misses": 0}
    assert abs(self_report["metrics"]["FD_PANNs"]) < 1e-3 and abs(self_report["metrics"]["KL_PANNs"]) < 1e-9
    assert sorted(self_report["metrics"]) == ["FD_PANNs", "KL_PANNs"]


def test_evaluate_bad_input(cnn14_weights, clip_dirs, tmp_path, capsys):
    _, pth, _ = cnn14_weights
    pred, ref = clip_dirs
    common = ["--panns-weights", str(pth), "--no-cache", "--no-progress"]
    assert_cli_error(["evaluate", "--pred", str(tmp_path / "missing"), "--ref", str(ref)] + common, "`--pred`.*not a directory", capsys)
    # Mismatched names.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("clip0", "clip1", "extra"):
        (other / f"{name}.wav").write_bytes((pred / "clip0.wav").read_bytes())
    assert_cli_error(
        ["evaluate", "--pred", str(other), "--ref", str(ref)] + common,
        r"mismatched names.*only in `--pred`: 'extra'.*only in `--ref`: 'clip2', 'clip3'",
        capsys,
    )
    # Unreadable audio: the clip and the folder are named.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("clip0", "clip1", "clip2"):
        (broken / f"{name}.wav").write_bytes((ref / f"{name}.wav").read_bytes())
    (broken / "clip3.wav").write_bytes(b"not audio at all")
    assert_cli_error(["evaluate", "--pred", str(pred), "--ref", str(broken)] + common, "`--ref` clip 'clip3'", capsys)
    # The same from a worker process.
    argv = ["evaluate", "--pred", str(pred), "--ref", str(broken), "--num-workers", "2"] + common
    assert_cli_error(argv, "`--ref` clip 'clip3'.*could not be opened", capsys)
    assert_cli_error(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "fd_openl3"] + common, "unknown", capsys)
    assert_cli_error(["evaluate", "--pred", str(pred), "--ref", str(ref), "--no-progress"], "--panns-weights", capsys)


def test_evaluate_desync_end_to_end(clip_dirs, tmp_path, capsys):
    from foley_toolkit.cli import main
    from foley_toolkit.evaluation.extractors import SynchformerDeSync, desync_score
    from foley_toolkit.models.encoders import tiny_synchformer_config
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder
    from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead

    torch.manual_seed(0)
    SynchformerEncoder(**tiny_synchformer_config()).save_pretrained(tmp_path / "sync_encoder")
    SynchformerSyncHead(visual_dim=32, num_classes=5, audio_channels=8, audio_layers=1, max_lag=4).save_pretrained(
        tmp_path / "sync_head"
    )
    pred, ref = clip_dirs
    videos = pred.parent / "videos"
    subset_pred, subset_ref = tmp_path / "pred", tmp_path / "ref"
    for folder, source in ((subset_pred, pred), (subset_ref, ref)):
        folder.mkdir()
        for name in ("clip0.wav", "clip1.wav"):
            (folder / name).write_bytes((source / name).read_bytes())
    out = tmp_path / "desync.json"
    argv = ["evaluate", "--pred", str(subset_pred), "--ref", str(subset_ref), "--metrics", "desync"]
    argv += ["--videos", str(videos), "--sync-encoder", str(tmp_path / "sync_encoder"), "--sync-head"]
    argv += [str(tmp_path / "sync_head"), "--desync-window-segments", "3", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert sorted(report["metrics"]) == ["DeSync"]
    assert capsys.readouterr().out.splitlines()[1].split() == ["DeSync"]
    scorer = SynchformerDeSync.from_pretrained(tmp_path / "sync_encoder", tmp_path / "sync_head", 0.12, window_segments=3)
    offsets = [scorer.file_offsets(videos / f"clip{i}.mp4", subset_pred / f"clip{i}.wav") for i in range(2)]
    assert all(len(o) == 2 and all(abs(x) in (0.0, 0.12, 0.24) for x in o) for o in offsets)
    assert report["metrics"]["DeSync"] == pytest.approx(desync_score(offsets))
    # A clip without its video is named.
    argv[argv.index("--pred") + 1], argv[argv.index("--ref") + 1] = str(pred), str(ref)
    assert_cli_error(argv, "`--videos`.*no video for 2 clip.*'clip2', 'clip3'", capsys)


def test_evaluate_desync_with_the_public_synchformer_classifier(clip_dirs, tmp_path, capsys):
    """--sync-head holding a converted SynchformerOffsetClassifier: its own window, 16 kHz audio, -2..+2 s grid."""
    from foley_toolkit.cli import main
    from foley_toolkit.evaluation.extractors import SynchformerOffsetDeSync, desync_score
    from foley_toolkit.models.encoders import tiny_synchformer_config
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder
    from foley_toolkit.models.encoders.synchformer_offset_classifier import SynchformerOffsetClassifier

    torch.manual_seed(0)
    SynchformerEncoder(**tiny_synchformer_config()).save_pretrained(tmp_path / "sync_encoder")
    classifier = SynchformerOffsetClassifier(
        visual_dim=32, hidden_size=32, audio_num_layers=1, audio_num_attention_heads=4, audio_intermediate_size=32,
        num_layers=1, num_attention_heads=4, window_segments=3,
    )  # fmt: skip
    with torch.no_grad():  # zero-initialised tokens and positions: randomise everything
        for parameter in classifier.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    classifier.save_pretrained(tmp_path / "sync_classifier")
    source_pred, source_ref = clip_dirs
    videos = source_pred.parent / "videos"
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for folder, source in ((pred, source_pred), (ref, source_ref)):
        folder.mkdir()
        for name in ("clip0.wav", "clip1.wav"):  # the clips with a video
            (folder / name).write_bytes((source / name).read_bytes())
    out = tmp_path / "desync.json"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "desync", "--videos", str(videos)]
    argv += ["--sync-encoder", str(tmp_path / "sync_encoder"), "--sync-head", str(tmp_path / "sync_classifier")]
    argv += ["--json", str(out), "--no-progress", "--no-cache"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    info = report["extractors"]["synchformer"]
    assert info["head_class"] == "SynchformerOffsetClassifier" and info["sample_rate"] == 16000
    assert info["window_segments"] == 3 and len(info["offset_grid"]) == 21 and info["offset_step"] == pytest.approx(0.2)
    scorer = SynchformerOffsetDeSync.from_pretrained(tmp_path / "sync_encoder", tmp_path / "sync_classifier")
    names = sorted(p.stem for p in pred.glob("*.wav"))
    offsets = [scorer.file_offsets(videos / f"{n}.mp4", pred / f"{n}.wav") for n in names]
    assert all(len(o) == 2 and all(abs(x * 5 - round(x * 5)) < 1e-9 and abs(x) <= 2 for x in o) for o in offsets)
    assert report["metrics"]["DeSync"] == pytest.approx(desync_score(offsets))
    # The logits depend on the audio (a window of another clip gives other logits).
    from foley_toolkit.audio_utils import load_audio

    tokens = torch.randn(1, 3 * 8, 32)
    windows = [torch.as_tensor(load_audio(pred / f"{n}.wav", sample_rate=16000, mono=True)[0][:20480]) for n in names]
    assert not torch.allclose(scorer.classify(tokens, windows[0][None]), scorer.classify(tokens, windows[1][None]))


def test_vggish_matches_the_public_port_and_drops_its_last_relu():
    port = pytest.importorskip("torchvggish.torchvggish")
    from foley_toolkit.evaluation.extractors import VGGish, VGGishExtractor, vggish_examples

    torch.manual_seed(0)
    model = VGGish().eval()
    reference = port._vgg(postprocess=False).eval()
    reference.load_state_dict(model.state_dict(), strict=True)  # same parameter names and shapes
    extractor = VGGishExtractor(model)
    audio = torch.randn(2, int(2.5 * 22050)) * 0.1
    embedding = extractor.embed(audio, 22050)
    assert embedding.shape == (2, 128)  # one row per whole 0.96 s example of 2.5 s
    patches = vggish_examples(extractor.prepare(audio, 22050)[0].numpy())
    with torch.no_grad():
        torch.testing.assert_close(torch.relu(embedding), reference(patches), rtol=1e-5, atol=1e-6)
    assert (embedding < 0).any()  # av-benchmark's VGGish has no final ReLU
    with pytest.raises(ValueError, match="no classification head"):
        extractor.classify(audio, 22050)


def test_evaluate_fd_vgg_and_column_order(cnn14_weights, clip_dirs, tmp_path, capsys):
    from foley_toolkit.cli import main
    from foley_toolkit.evaluation.extractors import VGGish, VGGishExtractor

    torch.manual_seed(0)
    vggish_pth = tmp_path / "vggish-random.pth"
    torch.save(VGGish().state_dict(), vggish_pth)  # the port's checkpoint layout: a bare state dict
    pred, ref = clip_dirs
    out = tmp_path / "r.json"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "is", "fd_vgg", "fd_panns"]
    argv += ["--panns-weights", str(cnn14_weights[1]), "--vggish-weights", str(vggish_pth), "--no-progress"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["FD_PANNs", "FD_VGG", "IS"]
    report = json.loads(out.read_text())
    assert sorted(report["extractors"]) == ["panns", "vggish"]
    extractor = VGGishExtractor.from_pretrained(vggish_pth)
    names = sorted(p.name for p in pred.glob("*.wav"))
    gen = torch.cat([extractor.extract_prepared(extractor.load(pred / n))["embedding"] for n in names])
    refs = torch.cat([extractor.extract_prepared(extractor.load(ref / n))["embedding"] for n in names])
    assert gen.shape == (4, 128)  # 1.5 s clips: one 0.96 s example each
    assert report["metrics"]["FD_VGG"] == pytest.approx(frechet_distance(gen, refs), rel=1e-4)
    assert report["metrics"]["FD_VGG"] > 0


def test_evaluate_clap_score(clip_dirs, tmp_path, capsys):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from foley_toolkit.cli import main
    from foley_toolkit.evaluation.distribution_metrics import mean_cosine_similarity
    from foley_toolkit.evaluation.extractors import ClapExtractor
    from foley_toolkit.pipelines.kling_foley.testing import build_tiny_t5_tokenizer

    tokenizer = build_tiny_t5_tokenizer()
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=16, hidden_size=32),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    clap_dir = tmp_path / "clap"
    ClapModel(config).save_pretrained(clap_dir)
    ClapFeatureExtractor().save_pretrained(clap_dir)
    tokenizer.save_pretrained(clap_dir)
    pred, ref = clip_dirs
    captions = {f"clip{i}": text for i, text in enumerate(["a dog barks", "glass shatters", "a bell rings", "rain"])}
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("".join(json.dumps({"file_name": f"{k}.mp4", "caption": v}) + "\n" for k, v in captions.items()))
    out = tmp_path / "clap.json"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--clap", str(clap_dir), "--captions", str(metadata)]
    argv += ["--metrics", "clap", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["CLAP"]
    report = json.loads(out.read_text())
    assert report["cache"]["misses"] == 4  # generated clips only

    extractor = ClapExtractor.from_pretrained(clap_dir)
    names = sorted(captions)
    audio = torch.stack([extractor.extract_prepared(extractor.load(pred / f"{n}.wav"))["embedding"] for n in names])
    text = extractor.embed_text([captions[n] for n in names])
    expected = mean_cosine_similarity(text, audio)
    assert report["metrics"]["CLAP"] == pytest.approx(expected, abs=1e-5)
    # Captions are paired by name: shuffled captions give another score.
    assert abs(mean_cosine_similarity(text.roll(1, dims=0), audio) - expected) > 1e-4
    # A clip without a caption is named; a CSV needs name/caption columns.
    metadata.write_text(json.dumps({"file_name": "clip0.mp4", "caption": "x"}) + "\n")
    assert_cli_error(argv, r"no caption for 3 clip\(s\): 'clip1', 'clip2', 'clip3'", capsys)
    bad_csv = tmp_path / "captions.csv"
    bad_csv.write_text("file,text\nclip0,x\n")
    argv[argv.index("--captions") + 1] = str(bad_csv)
    assert_cli_error(argv, "`name` and `caption` columns", capsys)


def test_mean_cosine_similarity():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert mean_cosine_similarity(a, b) == pytest.approx((1.0 + math.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="paired"):
        mean_cosine_similarity(a, b[:1])
