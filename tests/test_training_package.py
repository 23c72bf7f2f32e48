"""`foley_toolkit.training` as a library: the `FlowMatching` objective, the trained pipeline folder, and the scripts
in ``training/`` as thin, self-contained users of it (one `--pretrained_model_name_or_path`, old spellings kept)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from training_fixtures import (  # noqa: F401  (fixtures)
    TRAINING_DIR,
    fresh_accelerate_state,
    tiny_pipeline_dir,
)

from foley_toolkit.training import FlowMatching, save_trained_pipeline

SCRIPTS = sorted(p.stem for p in TRAINING_DIR.glob("*.py"))


# ------------------------------------------------------------------------------------------------
# FlowMatching
# ------------------------------------------------------------------------------------------------


def test_flow_matching_interpolation_target_and_loss_equal_the_formulas():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 5, generator=generator)
    noise = torch.randn(2, 3, 5, generator=generator)
    sigmas = torch.tensor([0.25, 0.9])
    objective = FlowMatching()

    x_t, target, timesteps = objective.interpolate(x0, noise, sigmas)
    for i, s in enumerate(sigmas.tolist()):
        assert torch.allclose(x_t[i], (1 - s) * x0[i] + s * noise[i], atol=1e-7)
    assert torch.equal(target, noise - x0)
    assert torch.allclose(timesteps, torch.tensor([250.0, 900.0]))

    prediction = torch.randn(2, 3, 5, generator=generator)
    # no mask: the mean over every element of each sample, then over the batch
    expected = sum(((prediction[i] - target[i]) ** 2).mean() for i in range(2)) / 2
    assert torch.allclose(objective.loss(prediction, target), expected, atol=1e-7)
    # a padded batch: sample 0 has 3 real frames of 5, sample 1 all 5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    by_hand = ((prediction[0, :, :3] - target[0, :, :3]) ** 2).mean() + ((prediction[1] - target[1]) ** 2).mean()
    assert torch.allclose(objective.loss(prediction, target, mask), by_hand / 2, atol=1e-7)
    # the padded frames do not count: changing them leaves the loss unchanged
    changed = prediction.clone()
    changed[0, :, 3:] += 100.0
    assert torch.equal(objective.loss(changed, target, mask), objective.loss(prediction, target, mask))


def test_flow_matching_noise_levels_are_reproducible_from_a_seed_and_shifted_like_the_scheduler():
    objective = FlowMatching(logit_mean=0.3, logit_std=0.8)
    first = objective.sample_sigmas(6, generator=torch.Generator().manual_seed(7))
    again = objective.sample_sigmas(6, generator=torch.Generator().manual_seed(7))
    other = objective.sample_sigmas(6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # logit-normal: sigmoid of N(0.3, 0.8) drawn from the same generator
    by_hand = torch.sigmoid(torch.normal(0.3, 0.8, size=(6,), generator=torch.Generator().manual_seed(7)))
    assert torch.allclose(first, by_hand, atol=1e-7) and first.dtype == torch.float32
    # the static shift of FlowMatchEulerDiscreteScheduler(shift=3)
    shifted = FlowMatching(logit_mean=0.3, logit_std=0.8, shift=3.0).sample_sigmas(
        6, generator=torch.Generator().manual_seed(7)
    )
    assert torch.allclose(shifted, 3 * first / (1 + 2 * first), atol=1e-6)
    # ... which is what the scheduler does to the same levels at inference
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=first.numpy())
    assert torch.allclose(scheduler.sigmas[:-1].float(), shifted, atol=1e-6)
    assert bool((shifted > first).all())
    with pytest.raises(ValueError, match="shift"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="text_dropout"):
        FlowMatching(text_dropout=1.5)


# ------------------------------------------------------------------------------------------------
# The trained pipeline folder
# ------------------------------------------------------------------------------------------------


def test_trained_pipeline_folder_is_saved_with_the_new_component_and_a_fresh_card(tmp_path, tiny_pipeline_dir):
    import shutil

    from foley_toolkit.model_cards import ComponentCard, kling_foley_card
    from foley_toolkit.models.mono2stereo import Mono2Stereo
    from foley_toolkit.pipelines import KlingFoleyPipeline

    base = tmp_path / "base"
    shutil.copytree(tiny_pipeline_dir, base)
    (base / "README.md").write_text("# Demo pipeline\nonset F1 0.49 on held-out clips\n")
    (base / "eval_sync.json").write_text(json.dumps({"onset_f1": 0.49}))
    trained = Mono2Stereo.from_pretrained(base / "mono2stereo")
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)
    trained_by = ComponentCard(
        "mono2stereo", None, None, pretrained=False, trained_by="`training/train_mono2stereo.py`"
    )
    card = kling_foley_card("Kling-Foley: `mono2stereo` trained", "Fresh card of this run.", [trained_by])

    out = save_trained_pipeline(base, tmp_path / "run" / "pipeline", {"mono2stereo": trained}, card)

    text = (out / "README.md").read_text()
    assert "Fresh card of this run." in text and "Demo pipeline" not in text and "onset F1" not in text
    assert not (out / "eval_sync.json").exists()
    assert not list(out.parent.glob(".*tmp*")), "the temporary folder was renamed"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_kling_foley", "KlingFoleyPipeline"]
    assert (out / "pipeline_kling_foley.py").is_file()
    loaded = KlingFoleyPipeline.from_pretrained(out)
    original = KlingFoleyPipeline.from_pretrained(base)
    for name, value in loaded.mono2stereo.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name])
    for name, value in loaded.transformer.state_dict().items():
        assert torch.equal(value, original.transformer.state_dict()[name])


# ------------------------------------------------------------------------------------------------
# The scripts
# ------------------------------------------------------------------------------------------------


def test_scripts_neither_edit_sys_path_nor_import_each_other():
    assert {"train_transformer", "train_lora", "train_vae", "extract_features"} <= set(SCRIPTS)
    for script in SCRIPTS:
        tree = ast.parse((TRAINING_DIR / f"{script}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                pytest.fail(f"{script}.py uses sys.path")
        assert not imported & set(SCRIPTS), f"{script}.py imports {imported & set(SCRIPTS)}"


def test_help_works_from_another_working_directory(tmp_path):
    script = TRAINING_DIR / "train_transformer.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--pretrained_model_name_or_path" in result.stdout and "--feature_dir" in result.stdout


@pytest.mark.parametrize("script", ["train_vae", "train_vocoder", "train_mono2stereo", "train_sync_encoder"])
def test_codec_scripts_accept_the_old_model_flags_as_deprecated_aliases(script, tmp_path):
    module = __import__(script)
    new = module.parse_args(["--output_dir", str(tmp_path), "--pretrained_model_name_or_path", "pipe-a"])
    assert new.pretrained_model_name_or_path == "pipe-a"
    for old in ("--pretrained_model", "--base_pipeline"):
        with pytest.warns(FutureWarning, match=rf"`{old}` is deprecated: use `--pretrained_model_name_or_path`"):
            args = module.parse_args(["--output_dir", str(tmp_path), old, "pipe-b"])
        assert args.pretrained_model_name_or_path == "pipe-b"
        assert not hasattr(args, "pretrained_model") and not hasattr(args, "base_pipeline")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        module.parse_args(["--output_dir", str(tmp_path), "--pretrained_model_name_or_path", "pipe-a"])
    # the old pair with one value (what recipes passed) is one argument; two different values are refused
    with pytest.warns(FutureWarning):
        args = module.parse_args(["--output_dir", str(tmp_path), "--pretrained_model", "p", "--base_pipeline", "p"])
    assert args.pretrained_model_name_or_path == "p"
    with pytest.warns(FutureWarning), pytest.raises(SystemExit):
        module.parse_args(["--output_dir", str(tmp_path), "--pretrained_model", "p", "--base_pipeline", "q"])


@pytest.mark.parametrize("script", ["train_transformer", "train_lora", "extract_features"])
def test_feature_scripts_accept_the_old_model_flag(script, tmp_path):
    module = __import__(script)
    rest = ["--feature_dir", "f"] if script != "extract_features" else ["--data_dir", str(tmp_path)]
    with pytest.warns(FutureWarning, match="--pretrained_model_name_or_path"):
        args = module.parse_args(["--output_dir", str(tmp_path), "--pretrained_model", "pipe", *rest])
    assert args.pretrained_model_name_or_path == "pipe"
    if script != "extract_features":
        with pytest.raises(SystemExit):  # still required
            module.parse_args(["--output_dir", str(tmp_path), *rest])


def test_recipes_use_the_new_flag_name():
    for recipe in sorted((TRAINING_DIR / "recipes").glob("*.sh")):
        text = recipe.read_text()
        assert "--base_pipeline" not in text and "--pretrained_model " not in text, recipe.name


def test_training_utils_still_exports_the_old_names_from_the_package():
    import foley_toolkit.training as training
    import foley_toolkit.training_utils as training_utils

    old_names = [
        "CodecLossWeights", "codec_loss_weights", "set_codec_encoder_trainable", "mel_mse_loss", "margin_kl_loss",
        "hinge_discriminator_loss", "generator_adversarial_loss", "least_squares_discriminator_loss",
        "least_squares_generator_loss", "r1_gradient_penalty", "feature_matching_loss", "mono2stereo_loss",
        "latent_statistics", "sample_flow_matching_sigmas", "flow_matching_inputs", "masked_mse_loss",
        "condition_dropout_masks", "InverseLRLambda", "get_inverse_lr_scheduler", "pad_sequences",
        "multi_resolution_stft_loss", "TEMPORARY_MARKER", "replace_path", "atomic_output", "atomic_write_text",
        "atomic_save_pretrained", "non_finite_tensors",
    ]  # fmt: skip
    for name in old_names:
        assert getattr(training_utils, name) is getattr(training, name), name
