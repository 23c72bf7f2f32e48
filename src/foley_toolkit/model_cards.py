"""Model cards for Kling-Foley pipelines: one `huggingface_hub` template for every card the toolkit writes (preset
cards in ``model_cards/``, assembled pipelines, trained pipelines).

A card states, per pipeline component, its class, its parameter count, whether its weights are pretrained (and
where from) or not, and its licence; non-commercial licences are flagged, and a pipeline holding any
non-commercial weights is labelled with that licence as a whole. The metadata (`ModelCardData`) carries the
licence, the public base models (Hub ids), datasets, tags (``video-to-audio``, ...) and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch


# Jinja template rendered by `huggingface_hub.ModelCard.from_template` (`card_data` is the YAML header).
# `model_cards/template.md` is this text, written by `model_cards/make_cards.py`.
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Components

| component | class | parameters | weights | licence of the weights |
|---|---|---:|---|---|
{% for c in components -%}
| `{{ c.name }}` | {{ c.cls }} | {{ c.parameters }} | {{ c.weights }} | {{ c.licence }} |
{% endfor %}
{% if total_parameters %}Total: **{{ total_parameters }}** parameters{% if trainable_note %} ({{ trainable_note }}){% endif %}.
{% endif %}
## Licences

{% for line in licence_notes -%}
- {{ line }}
{% endfor %}
{% if facts %}
## Training

| fact | value |
|---|---|
{% for key, value in facts.items() -%}
| {{ key }} | {{ value }} |
{% endfor %}
{% endif %}{% if speed %}
## Generation speed

{{ speed }}
{% endif %}
## Evaluation

{{ evaluation }}
"""

# Tags every Kling-Foley card carries.
BASE_TAGS = ("foley_toolkit", "kling-foley", "video-to-audio", "text-to-audio", "audio-generation")
# The toolkit's metrics (foley_toolkit.evaluation): distribution, sync and codec.
METRICS = ("frechet_distance", "kl_divergence", "inception_score", "onset_f1", "mel_distance", "si_sdr", "pesq")

# The public pretrained parts, by pipeline component: the `foley_toolkit.conversion.LICENCES` entry, the Hub id
# that can be named as `base_model` (None: not on the Hub), and how to get the weights.
PUBLIC_COMPONENTS: dict[str, dict[str, Optional[str]]] = {
    "text_encoder": {"part": "t5", "hub_id": "google-t5/t5-base", "how": "`foley-toolkit convert t5`"},
    "tokenizer": {"part": "t5", "hub_id": "google-t5/t5-base", "how": "`foley-toolkit convert t5`"},
    "vision_encoder": {
        "part": "metaclip",
        "hub_id": "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b",
        "how": "`foley-toolkit convert metaclip`",
    },
    "sync_encoder": {"part": "synchformer", "hub_id": None, "how": "`foley-toolkit convert synchformer`"},
    "vocoder": {
        "part": "bigvgan",
        "hub_id": "nvidia/bigvgan_v2_44khz_128band_512x",
        "how": "`foley-toolkit convert bigvgan`",
    },
}

# Components with no public Kling-Foley weights, and the script that trains each.
TRAINED_HERE = {
    "transformer": "training/train_transformer.py",
    "vae": "training/train_vae.py",
    "mono2stereo": "training/train_mono2stereo.py",
}

NON_COMMERCIAL_MARKERS = ("NC", "non-commercial")

_LICENSE_IDS = {"MIT": "mit", "Apache-2.0": "apache-2.0"}


def _licences() -> Mapping[str, Mapping[str, str]]:
    from foley_toolkit.conversion.common import LICENCES

    return LICENCES


def is_non_commercial(licence: str) -> bool:
    """Whether a licence string names a non-commercial licence (e.g. ``CC-BY-NC-4.0``)."""
    return any(marker in licence for marker in NON_COMMERCIAL_MARKERS)


@dataclass
class ComponentCard:
    """One row of a card's component table.

    Args:
        name: pipeline component name (``transformer``, ``vision_encoder``, ...).
        cls: class name (None when not known).
        parameters: parameter count (None for parameter-free parts such as the tokenizer).
        pretrained: whether the weights come from a public checkpoint (`PUBLIC_COMPONENTS`).
        trained_by: for weights that are not public: who trained them (a script, a run), or None when untrained.
    """

    name: str
    cls: Optional[str]
    parameters: Optional[int]
    pretrained: bool
    trained_by: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def licence(self) -> str:
        if self.pretrained:
            part = _licences()[PUBLIC_COMPONENTS[self.name]["part"]]
            return f"**{part['weights']}**" if is_non_commercial(part["weights"]) else part["weights"]
        return "yours (trained with foley_toolkit)" if self.trained_by else "none (untrained)"

    @property
    def weights(self) -> str:
        if self.pretrained:
            info = PUBLIC_COMPONENTS[self.name]
            part = _licences()[info["part"]]
            return f"pretrained: {part['name']} ({part['source']}), via {info['how']}"
        if self.trained_by:
            return f"trained: {self.trained_by}"
        script = TRAINED_HERE.get(self.name)
        return "not pretrained (no public weights)" + (f": train with `{script}`" if script else "")

    def row(self) -> dict[str, str]:
        parameters = "-" if self.parameters is None else format_parameters(self.parameters)
        cls = f"`{self.cls}`" if self.cls else "-"
        return {"name": self.name, "cls": cls, "parameters": parameters, "weights": self.weights,
                "licence": self.licence}  # fmt: skip


def format_parameters(count: int) -> str:
    """``1,524,138,112 (1.52B)``: the exact count and a rounded one."""
    if count < 1e6:
        return f"{count:,}"
    rounded = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    return f"{count:,} ({rounded})"


def num_parameters(model: torch.nn.Module) -> int:
    """Parameters of `model` (shared tensors counted once); works on the meta device."""
    return sum(parameter.numel() for parameter in model.parameters())


def card_license(components: Sequence[ComponentCard]) -> str:
    """The Hub licence id of a pipeline: ``cc-by-nc-4.0`` when any weights are non-commercial, the licence the
    pretrained parts share when they all have one known licence, else ``other`` (explained in the card text)."""
    licences = {_licences()[PUBLIC_COMPONENTS[c.name]["part"]]["weights"] for c in components if c.pretrained}
    if any(is_non_commercial(licence) for licence in licences):
        return "cc-by-nc-4.0"
    ids = {_LICENSE_IDS.get(licence) for licence in licences} | {"apache-2.0"}  # the toolkit's own code
    return ids.pop() if len(ids) == 1 else "other"


def licence_notes(components: Sequence[ComponentCard]) -> list[str]:
    """One line per licence fact of a pipeline: the toolkit code, each pretrained part, the non-commercial flag."""
    notes = ["foley_toolkit code: Apache-2.0. Kling-Foley itself has no public weights."]
    seen = set()
    for component in components:
        if not component.pretrained:
            continue
        part = PUBLIC_COMPONENTS[component.name]["part"]
        if part in seen:
            continue
        seen.add(part)
        info = _licences()[part]
        weights = f"**{info['weights']}**" if is_non_commercial(info["weights"]) else info["weights"]
        notes.append(f"{info['name']}: code {info['code']}, weights {weights} ({info['source']}).")
    if card_license(components) == "cc-by-nc-4.0":
        notes.append(
            "**This pipeline holds non-commercial weights: as a whole it may only be used non-commercially.** "
            "Replace those components (e.g. train your own) before any commercial use."
        )
    return notes


def kling_foley_card(
    title: str,
    summary: str,
    components: Sequence[ComponentCard],
    facts: Optional[Mapping[str, Any]] = None,
    datasets: Sequence[str] = (),
    evaluation: Optional[str] = None,
    tags: Sequence[str] = (),
    base_model: Optional[Sequence[str]] = None,
    license: Optional[str] = "auto",
    notes: Sequence[str] = (),
    speed: Optional[str] = None,
):
    r"""
    A `huggingface_hub.ModelCard` in the shared template (`MODEL_CARD_TEMPLATE`).

    Args:
        title (`str`): The card's heading.
        summary (`str`): A paragraph on what the folder is.
        components (`Sequence[ComponentCard]`): The pipeline's parts (table rows, licences, `base_model`).
        facts (`Mapping`, *optional*): Training facts (a table; `None` values are left out).
        datasets (`Sequence[str]`): Hub dataset ids the weights were trained on.
        evaluation (`str`, *optional*): Evaluation text; by default a note that the card holds no results.
        tags (`Sequence[str]`): Extra Hub tags.
        base_model (`Sequence[str]`, *optional*): Hub ids; by default those of the pretrained components.
        license (`str`, *optional*, defaults to `"auto"`): The Hub licence id; `"auto"` derives it from the
            components (`card_license`), None leaves it unset (when the card does not list every component).
        notes (`Sequence[str]`): Extra lines for the licence section.
        speed (`str`, *optional*): A "Generation speed" section (e.g. `speed_section` of a benchmark result).

    Returns:
        `huggingface_hub.ModelCard`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if not components:
        raise ValueError("`components` must name at least one pipeline component.")
    if base_model is None:
        ids = [PUBLIC_COMPONENTS[c.name]["hub_id"] for c in components if c.pretrained]
        base_model = list(dict.fromkeys(hub_id for hub_id in ids if hub_id))
    data = ModelCardData(
        license=card_license(components) if license == "auto" else license,
        library_name="diffusers",
        pipeline_tag="text-to-audio",  # the Hub has no video-to-audio task: the tag below says it
        tags=list(dict.fromkeys([*BASE_TAGS, *tags])),
        base_model=list(base_model) or None,
        datasets=list(datasets) or None,
        metrics=list(METRICS),
    )
    total = sum(c.parameters or 0 for c in components)  # 0: no counts known (left out of the card)
    untrained_parts = [c for c in components if not c.pretrained and not c.trained_by]
    untrained = sum(c.parameters or 0 for c in untrained_parts)
    return ModelCard.from_template(
        data,
        template_str=MODEL_CARD_TEMPLATE,
        title=title,
        summary=summary,
        components=[c.row() for c in components],
        total_parameters=format_parameters(total) if total else None,
        trainable_note=f"{format_parameters(untrained)} untrained" if untrained else None,
        licence_notes=[*licence_notes(components), *notes],
        facts={key: value for key, value in (facts or {}).items() if value is not None},
        speed=speed,
        evaluation=evaluation
        or ("No evaluation results: the untrained components must be trained first. " if untrained_parts else "")
        + "Evaluate with `foley-toolkit eval-sync` / `eval-codec` and `foley_toolkit.evaluation` (FD, KL, IS) before "
        "publishing numbers.",
    )


def pipeline_card(
    components: Mapping[str, Any],
    pretrained: Sequence[str] = (),
    trained: Optional[Mapping[str, str]] = None,
    title: str = "Kling-Foley pipeline (foley_toolkit)",
    summary: Optional[str] = None,
    **kwargs,
):
    r"""
    The card of a pipeline from its components (e.g. `pipeline.components`, or what `assemble` built): class
    names and parameter counts are read from the modules themselves.

    Args:
        components (`Mapping[str, Any]`): Component name -> module (`None` entries and the scheduler are skipped;
            a tokenizer is listed without parameters).
        pretrained (`Sequence[str]`): Components that hold public pretrained weights (converted checkpoints);
            each must be one of `PUBLIC_COMPONENTS`.
        trained (`Mapping[str, str]`, *optional*): Component -> who trained it (a script, a folder).
        title, summary (`str`): The heading and the paragraph under it.
        **kwargs: Passed to [`kling_foley_card`] (facts, datasets, evaluation, tags, ...).
    """
    trained = dict(trained or {})
    unknown = [name for name in pretrained if name not in PUBLIC_COMPONENTS]
    if unknown:
        raise ValueError(f"`pretrained` names {unknown}, which have no public weights; expected some of "
                         f"{sorted(PUBLIC_COMPONENTS)}.")  # fmt: skip
    rows = []
    for name, module in components.items():
        if module is None or name == "scheduler":
            continue
        count = num_parameters(module) if isinstance(module, torch.nn.Module) else None
        rows.append(ComponentCard(name, type(module).__name__, count, pretrained=name in pretrained,
                                  trained_by=trained.get(name)))  # fmt: skip
    missing = [name for name in [*pretrained, *trained] if name not in {row.name for row in rows}]
    if missing:
        raise ValueError(f"`pretrained` / `trained` name components the pipeline lacks: {missing}.")
    if summary is None:
        untrained = [row.name for row in rows if not row.pretrained and not row.trained_by]
        summary = "A Kling-Foley (arXiv 2506.19774) pipeline of foley_toolkit." + (
            f" Untrained components: {', '.join(f'`{n}`' for n in untrained)} (no public weights exist)."
            if untrained
            else ""
        )
    return kling_foley_card(title, summary, rows, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Preset cards
# ----------------------------------------------------------------------------------------------------------


def preset_components(preset: str) -> list[ComponentCard]:
    """The components of a full-size pipeline with transformer preset `preset`, parameter counts computed by
    building every model on the meta device (nothing is allocated)."""
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE
    from foley_toolkit.models.encoders.presets import build_sync_encoder, build_text_encoder, build_vision_encoder
    from foley_toolkit.models.mono2stereo import Mono2Stereo
    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer
    from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config, build_vocoder

    config = FoleyMMDiTTransformer.preset_config(preset)  # raises ValueError for an unknown name
    with torch.device("meta"):
        models = {
            "transformer": FoleyMMDiTTransformer(**config),
            "vae": MelVAE(),
            "mono2stereo": Mono2Stereo(),
            "text_encoder": build_text_encoder(device="meta"),
            "vision_encoder": build_vision_encoder(device="meta"),
            "sync_encoder": build_sync_encoder(device="meta"),
            "vocoder": build_vocoder(bigvgan_v2_44khz_128band_512x_config()),
        }
    components = [
        ComponentCard(name, type(model).__name__, num_parameters(model), pretrained=name in PUBLIC_COMPONENTS)
        for name, model in models.items()
    ]
    components.insert(3, ComponentCard("tokenizer", "T5TokenizerFast", None, pretrained=True))
    return components


def speed_section(result: Mapping[str, Any]) -> str:
    """Markdown for a card's "Generation speed" section from a `benchmarks/bench_recipes.py` JSON result: seconds
    per stage for 8 s of video, this project's recipe against MMAudio-S's, with the machine and the command."""
    ours, theirs = result["this_project"], result["mmaudio_s"]
    names = list(dict.fromkeys([*ours["stages"], *theirs["stages"]]))

    def cell(recipe: Mapping[str, Any], name: str) -> str:
        stage = recipe["stages"].get(name)
        return "-" if stage is None else f"{stage['seconds']:.2f} s"

    rows = [f"| {name} | {cell(ours, name)} | {cell(theirs, name)} |" for name in names]
    rows.append(f"| **total** | **{ours['total_s']:.1f} s** | **{theirs['total_s']:.1f} s** |")
    return "\n".join(
        [
            f"Seconds per stage for 8 s of video, 20 steps, stereo, with the full-size parts (random weights): "
            f"{result['dtype']} weights, {result['threads']} CPU threads ({result['cpu']}, measured "
            f"{result['started']}), against MMAudio-S's recipe (25 steps, guidance as two batch-1 calls, mono) in "
            f"the same harness: `OMP_NUM_THREADS={result['threads']} python benchmarks/bench_recipes.py --dtype "
            f"{result['dtype']} --threads {result['threads']}` (its docstring states the method).",
            "",
            "| stage | this pipeline | MMAudio-S recipe |",
            "|---|---:|---:|",
            *rows,
        ]
    )


def preset_card(preset: str, speed: Optional[str] = None):
    """The model card of transformer preset `preset` (``small``, ``kling-foley-1.5b``, ``kling-foley-3b``,
    ``kling-foley-6b``) in a pipeline with the public encoders and vocoder; `speed` fills its "Generation speed"
    section (`speed_section`)."""
    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer

    config = FoleyMMDiTTransformer.preset_config(preset)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    summary = (
        f"The `{preset}` size of Kling-Foley (arXiv 2506.19774) in foley_toolkit: a `FoleyMMDiTTransformer` of width "
        f"{width} ({config['num_attention_heads']} heads x {config['attention_head_dim']}), "
        f"{config['num_joint_layers']} joint (audio + CLIP + text) and {config['num_single_layers']} audio-only "
        "blocks, assembled with the public pretrained encoders and vocoder "
        "(`foley-toolkit assemble --transformer-preset "
        f"{preset}`). No Kling-Foley weights are public: the transformer, the MelVAE and Mono2Stereo start "
        "untrained and must be trained (`training/README.md`). Parameter counts are computed by "
        "`model_cards/make_cards.py` from the models built on the meta device."
    )
    return kling_foley_card(f"Kling-Foley `{preset}` (foley_toolkit)", summary, preset_components(preset),
                            tags=[f"preset-{preset}"], speed=speed)  # fmt: skip
