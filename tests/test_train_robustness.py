"""Training scripts that never fail silently: NaN/Inf guards, bad items skipped and counted, atomic outputs, logs that
survive a resume, fresh model cards, trackers with validation audio, the Hub, unwritable folders and full disks.

The scripts run in-process on the tiny pipeline and synthetic clips of `training_fixtures` (2-3 steps each).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import struct
import threading
from pathlib import Path

import pytest
import torch
from training_fixtures import (  # noqa: F401  (fixtures)
    EXTRACT_ARGS,
    clip_data_dir,
    feature_dir,
    fresh_accelerate_state,
    load_safetensors_dir,
    one_torch_thread,
    reset_accelerate_state,
    tiny_pipeline_dir,
)


def _run(script, argv: list) -> dict:
    try:
        return script.main(script.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate_state()


def _transformer_argv(pipeline, features, output, *extra):
    return ["--pretrained_model", pipeline, "--feature_dir", features, "--output_dir", output,
            "--train_batch_size", 2, "--learning_rate", 1e-3, *extra]  # fmt: skip


def _entries(features: Path) -> list[dict]:
    return [json.loads(line) for line in (features / "index.jsonl").read_text().splitlines()]


def _all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_safetensors_dir(folder).values())


@pytest.fixture
def nan_feature_dir(tmp_path, feature_dir) -> tuple[Path, str]:
    """A copy of the feature cache where one value of one item's `latents_mean` is NaN; returns (folder, item id)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    features = tmp_path / "features"
    shutil.copytree(feature_dir, features)
    entry = _entries(features)[1]
    path = features / entry["file"]
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors["latents_mean"][3, 2] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    return features, entry["id"]


# ------------------------------------------------------------------------------------------------
# Item 8: NaN/Inf in features and losses
# ------------------------------------------------------------------------------------------------


def test_nan_feature_stops_training_naming_the_item_and_skip_bad_items_counts_it(tmp_path, tiny_pipeline_dir, nan_feature_dir):
    import train_transformer

    features, bad_id = nan_feature_dir
    num_items = len(_entries(features))
    stopped = tmp_path / "stopped"
    argv = _transformer_argv(tiny_pipeline_dir, features, stopped, "--num_train_epochs", 1, "--checkpointing_steps", 1)
    with pytest.raises(ValueError, match=rf"{bad_id}.*latents_mean"):
        _run(train_transformer, argv)
    # Whatever was checkpointed before the bad batch is finite, and no pipeline was written.
    for checkpoint in stopped.glob("checkpoint-*"):
        assert _all_finite(checkpoint / "transformer")
    assert not (stopped / "pipeline").exists()

    skipped = tmp_path / "skipped"
    result = _run(
        train_transformer,
        _transformer_argv(tiny_pipeline_dir, features, skipped, "--num_train_epochs", 1, "--skip_bad_items",
                          "--duration_batching", "pad", "--checkpointing_steps", 1, "--checkpoints_total_limit", 1),
    )  # fmt: skip
    # One epoch in batches of 2 (any durations): the bad item left its batch, the other item trained.
    assert result["global_step"] == -(-num_items // 2)
    summary = json.loads((skipped / "training_summary.json").read_text())
    assert summary["num_bad_items"] == 1
    assert summary["bad_items"][0]["id"] == bad_id and "latents_mean" in summary["bad_items"][0]["reason"]
    assert summary["bad_items"][0]["file"].endswith(_entries(features)[1]["file"])
    log = [json.loads(line) for line in (skipped / "train_log.jsonl").read_text().splitlines()]
    assert sum(entry["bad_items"] for entry in log) == 1
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert _all_finite(skipped / "transformer") and _all_finite(skipped / "pipeline" / "transformer")


class _Args:
    """The flags `run_training_loop` reads."""

    def __init__(self, output_dir, skip_bad_items):
        self.output_dir, self.skip_bad_items = str(output_dir), skip_bad_items
        self.gradient_accumulation_steps, self.logging_steps, self.checkpointing_steps = 1, 1, 1
        self.checkpoints_total_limit, self.seed = 2, 0


def _nan_loss_run(output_dir, skip_bad_items: bool, bad_step: int = 3):
    """A linear regression through `common.run_training_loop` whose loss is NaN at optimizer step `bad_step`."""
    import common
    from accelerate import Accelerator

    from foley_toolkit.data import LengthGroupedBatchSampler

    accelerator = Accelerator()
    model = torch.nn.Linear(3, 1)
    common.register_checkpoint_hooks(accelerator, {"linear": model})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    dataset = [{"id": f"row{i}", "x": torch.full((3,), float(i))} for i in range(8)]
    sampler = LengthGroupedBatchSampler([1] * 8, batch_size=2, shuffle=False, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    weights = {}

    def training_step(batch, step):
        loss = model(batch["x"]).pow(2).mean()
        if step + 1 == bad_step:
            loss = loss * float("nan")
        common.backward_and_step(accelerator, loss, model.parameters(), optimizer, scheduler, 1.0)
        return {"loss": loss.item()}

    def on_step(step):
        weights[step] = common.unwrap_model(accelerator, model).weight.detach().clone()

    args = _Args(output_dir, skip_bad_items)
    result = common.run_training_loop(accelerator, args, loader, sampler, training_step, [model], 4, 4, 0, None, on_step)
    return result, weights


def test_nan_loss_is_never_checkpointed_nor_rotates_good_checkpoints_away(tmp_path):
    with pytest.raises(ValueError, match=r"Step 3: non-finite loss .*row4.*row5"):
        _nan_loss_run(tmp_path / "stop", skip_bad_items=False)
    reset_accelerate_state()
    # --checkpoints_total_limit 2: the two good checkpoints stay, none holds NaN.
    assert sorted(p.name for p in (tmp_path / "stop").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for checkpoint in (tmp_path / "stop").glob("checkpoint-*"):
        assert _all_finite(checkpoint / "linear")

    (global_step, history), weights = _nan_loss_run(tmp_path / "skip", skip_bad_items=True)
    assert global_step == 4 and [h["bad_items"] for h in history] == [0.0, 0.0, 1.0, 0.0]
    # The skipped step left the weights as they were; the next step trained again.
    torch.testing.assert_close(weights[3], weights[2], rtol=0, atol=0)
    assert not torch.equal(weights[4], weights[3])
    summary = json.loads((tmp_path / "skip" / "training_summary.json").read_text())
    assert summary["num_skipped_batches"] == 1 and summary["skipped_batches"][0]["ids"] == ["row4", "row5"]
    assert _all_finite(tmp_path / "skip" / "checkpoint-4" / "linear")


def test_extraction_never_caches_non_finite_features(tmp_path, tiny_pipeline_dir, clip_data_dir, monkeypatch):
    import extract_features

    real_extract = extract_features.extract_item

    def poisoned(pipe, example, args, device):
        tensors, metadata = real_extract(pipe, example, args, device)
        if example["id"] == poisoned_id:
            tensors["text_embeds"][0, 0] = float("inf")
        return tensors, metadata

    poisoned_id = "clip_00001@0"
    monkeypatch.setattr(extract_features, "extract_item", poisoned)
    argv = ["--pretrained_model", tiny_pipeline_dir, "--data_dir", clip_data_dir, *EXTRACT_ARGS]
    with pytest.raises(ValueError, match=rf"{poisoned_id}.*text_embeds"):
        _run(extract_features, [*argv, "--output_dir", tmp_path / "stop"])
    result = _run(extract_features, [*argv, "--output_dir", tmp_path / "skip", "--skip_bad_items"])
    assert result["num_bad_items"] == 1 and result["bad_items"][0]["id"] == poisoned_id
    assert result["num_indexed"] == result["num_items"] - 1
    ids = [e["id"] for e in _entries(tmp_path / "skip")]
    assert poisoned_id not in ids and len(ids) == result["num_indexed"]
    summary = json.loads((tmp_path / "skip" / "extraction_summary.json").read_text())
    assert summary["num_bad_items"] == 1
