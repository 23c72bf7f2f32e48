"""Model cards: the committed preset cards are what `model_cards/make_cards.py` computes, their parameter counts
are those of the built models, and they load with `huggingface_hub.ModelCard` with licence, tags and base models."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from foley_toolkit.model_cards import ComponentCard, card_license, kling_foley_card, num_parameters
from foley_toolkit.models.encoders.presets import build_sync_encoder
from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer

CARDS = Path(__file__).resolve().parents[1] / "model_cards"
PRESETS = ("small", "kling-foley-1.5b", "kling-foley-3b", "kling-foley-6b")


def _count(text: str, component: str) -> int:
    match = re.search(rf"^\| `{component}` \| `\w+` \| ([\d,]+) [(|]", text, flags=re.MULTILINE)
    assert match, f"no parameter count for {component}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def make_cards():
    spec = importlib.util.spec_from_file_location("make_cards", CARDS / "make_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_cards_are_generated(make_cards):
    assert make_cards.PRESETS == PRESETS
    for name, text in make_cards.expected_files().items():
        assert (CARDS / name).read_text(encoding="utf-8") == text, f"{name} is stale: run model_cards/make_cards.py"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_card_counts_match_built_models(preset):
    text = (CARDS / f"{preset}.md").read_text(encoding="utf-8")
    with torch.device("meta"):
        transformer = FoleyMMDiTTransformer(**FoleyMMDiTTransformer.preset_config(preset))
        sync_encoder = build_sync_encoder(device="meta")
    assert _count(text, "transformer") == num_parameters(transformer)
    assert _count(text, "sync_encoder") == num_parameters(sync_encoder) == 121_850_112
    counts = [_count(text, name) for name in ("transformer", "vae", "mono2stereo", "text_encoder", "vision_encoder",
                                              "sync_encoder", "vocoder")]  # fmt: skip
    total = int(re.search(r"Total: \*\*([\d,]+) ", text).group(1).replace(",", ""))
    assert total == sum(counts)
    # the paper's nominal sizes, within 3% (the preset comment's claim)
    nominal = {"small": 0.157e9, "kling-foley-1.5b": 1.5e9, "kling-foley-3b": 3e9, "kling-foley-6b": 6e9}[preset]
    assert abs(num_parameters(transformer) / nominal - 1) < 0.05


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_card_loads_with_metadata(preset):
    card = ModelCard.load(CARDS / f"{preset}.md")
    assert card.data.license == "cc-by-nc-4.0"  # MetaCLIP's weights are non-commercial
    assert {"video-to-audio", "kling-foley", "foley_toolkit"} <= set(card.data.tags)
    assert set(card.data.base_model) == {
        "google-t5/t5-base",
        "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b",
        "nvidia/bigvgan_v2_44khz_128band_512x",
    }
    assert "onset_f1" in card.data.metrics and card.data.library_name == "diffusers"
    text = card.text
    assert "**CC-BY-NC-4.0 (non-commercial)**" in text and "may only be used non-commercially" in text
    for component in ("transformer", "vae", "mono2stereo"):  # nothing public: stated as untrained
        assert re.search(rf"^\| `{component}` .*not pretrained .*\| none \(untrained\) \|$", text, flags=re.MULTILINE)
    for component in ("text_encoder", "vision_encoder", "sync_encoder", "vocoder"):
        assert re.search(rf"^\| `{component}` .*\| pretrained: ", text, flags=re.MULTILINE)


def test_licence_follows_the_parts(tmp_path):
    t5 = ComponentCard("text_encoder", "T5EncoderModel", 10, pretrained=True)
    bigvgan = ComponentCard("vocoder", "MMAudioVocoder", 20, pretrained=True)
    metaclip = ComponentCard("vision_encoder", "CLIPVisionModelWithProjection", 30, pretrained=True)
    trained = ComponentCard("transformer", "FoleyMMDiTTransformer", 40, pretrained=False, trained_by="run 1")
    assert card_license([t5, trained]) == "apache-2.0"
    assert card_license([t5, bigvgan, trained]) == "other"  # MIT + Apache-2.0: explained in the text
    assert card_license([t5, metaclip, trained]) == "cc-by-nc-4.0"
    card = kling_foley_card("t", "s", [t5, bigvgan, trained], facts={"steps": 7, "seed": None}, datasets=["a/b"])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.license == "other" and loaded.data.datasets == ["a/b"]
    assert "non-commercial" not in loaded.text and "| steps | 7 |" in loaded.text and "seed" not in loaded.text
    assert "Total: **70** parameters." in loaded.text  # 10 + 20 + 40, nothing untrained
    # a training card lists only what the run trained: no licence claimed, no total without counts
    unknown = ComponentCard("vae", None, None, pretrained=False, trained_by="`training/train_vae.py`")
    card = kling_foley_card("t", "s", [unknown], license=None, notes=["The other components are those of `x`."])
    assert card.data.license is None and "Total:" not in card.text and "those of `x`" in card.text
    assert "| `vae` | - | - | trained: `training/train_vae.py` |" in card.text
    with pytest.raises(ValueError, match="components"):
        kling_foley_card("t", "s", [])


def test_pipeline_card_reads_the_components():
    from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components

    from foley_toolkit.model_cards import pipeline_card

    components = get_dummy_components()
    card = pipeline_card(components, pretrained=["text_encoder", "tokenizer", "vision_encoder", "sync_encoder",
                                                 "vocoder"], trained={"vae": "`training/train_vae.py`"})  # fmt: skip
    text = card.text
    assert card.data.license == "cc-by-nc-4.0" and "google-t5/t5-base" in card.data.base_model
    transformer = components["transformer"]
    assert _count(text, "transformer") == num_parameters(transformer) > 0
    assert f"| `transformer` | `{type(transformer).__name__}` |" in text
    assert "Untrained components: `transformer`" in text
    assert "| `vae` | `MelVAE` |" in text and "trained: `training/train_vae.py`" in text
    assert "scheduler" not in text
    with pytest.raises(ValueError, match="no public weights"):
        pipeline_card(components, pretrained=["transformer"])
