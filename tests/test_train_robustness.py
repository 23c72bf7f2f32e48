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


# ------------------------------------------------------------------------------------------------
# Item 9: logs that survive a resume, outputs that appear whole
# ------------------------------------------------------------------------------------------------


def test_resumed_run_logs_each_step_once(tmp_path, tiny_pipeline_dir, feature_dir):
    """A run killed after logging step 3 but before checkpointing it replays step 3 when resumed: the log keeps
    one line per step, the replayed one being the resumed run's."""
    import train_transformer

    output = tmp_path / "run"
    argv = _transformer_argv(tiny_pipeline_dir, feature_dir, output, "--checkpointing_steps", 2,
                             "--resume_from_checkpoint", "latest")  # fmt: skip
    _run(train_transformer, [*argv, "--max_train_steps", 3])
    shutil.rmtree(output / "checkpoint-3")  # killed before the final checkpoint was written
    resumed = _run(train_transformer, [*argv, "--max_train_steps", 4])
    assert [h["step"] for h in resumed["history"]] == [3, 4]
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert log[2]["loss"] == resumed["history"][0]["loss"]


class _Inotify:
    """Records, through Linux inotify, how files appear in a folder tree while a run writes it: a file created
    under its final name (``IN_CREATE``) can be read half-written; one renamed into place (``IN_MOVED_TO``)
    cannot. Sub-folders are watched as they appear."""

    IN_MODIFY, IN_MOVED_TO, IN_CREATE, IN_ISDIR = 0x2, 0x80, 0x100, 0x40000000

    def __init__(self, root: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        self.paths: dict[int, Path] = {}
        self.events: list[tuple[str, Path]] = []
        self.stop = threading.Event()
        for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
            self.watch(folder)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def watch(self, folder: Path) -> None:
        wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_CREATE | self.IN_MOVED_TO | self.IN_MODIFY)
        if wd >= 0:
            self.paths[wd] = folder

    def read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            wd, mask, _, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
            offset += 16 + length
            if not name:  # an event of the watched folder itself
                continue
            path = self.paths.get(wd, Path("?")) / name
            if mask & self.IN_ISDIR:
                if mask & (self.IN_CREATE | self.IN_MOVED_TO):
                    self.watch(path)
                if mask & self.IN_MOVED_TO:  # a folder completed under a temporary name
                    self.events.append(("rename", path))
                continue
            kind = "create" if mask & self.IN_CREATE else "rename" if mask & self.IN_MOVED_TO else "modify"
            self.events.append((kind, path))

    def loop(self) -> None:
        while not self.stop.is_set():
            select.select([self.fd], [], [], 0.01)
            self.read()

    def close(self) -> list[tuple[str, Path]]:
        self.stop.set()
        self.thread.join()
        self.read()
        os.close(self.fd)
        return self.events


def _is_temporary(path: Path, root: Path) -> bool:
    return any(".tmp" in part for part in path.relative_to(root).parts)


def test_outputs_appear_whole_to_a_concurrent_reader(tmp_path, tiny_pipeline_dir, feature_dir):
    """While a run writes its outputs (log, validation audio, models, pipeline, summary), a reader polling them sees
    either nothing or a whole file: every file but the append-only log gets its final name by a rename."""
    import soundfile as sf
    import train_transformer

    output = tmp_path / "run"
    for folder in ("validation", "transformer", "pipeline"):  # watched from the start: outputs land in them
        (output / folder).mkdir(parents=True)
    watcher = _Inotify(output)
    partial_reads, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            for path in [output / "train_log.jsonl", output / "training_summary.json", *output.glob("validation/step-*.wav")]:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    if path.suffix == ".wav":
                        sf.read(path)
                    elif path.suffix == ".jsonl":
                        assert data.endswith(b"\n") or not data
                        [json.loads(line) for line in data.splitlines()]
                    else:
                        json.loads(data)
                except Exception as error:  # noqa: BLE001  (any parse error is a partial file)
                    partial_reads.append(f"{path.name}: {error}")

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        _run(train_transformer,
             _transformer_argv(tiny_pipeline_dir, feature_dir, output, "--max_train_steps", 2, "--validation_steps", 2,
                               "--validation_duration", 1.0, "--validation_prompt", "a ball bounces", "--num_validation_inference_steps", 2))  # fmt: skip
    finally:
        stop.set()
        reader.join()
        events = watcher.close()
    assert not partial_reads, partial_reads
    created_in_place = sorted({str(p.relative_to(output)) for kind, p in events if kind == "create" and not _is_temporary(p, output)})
    assert created_in_place == [], created_in_place
    modified = {str(p.relative_to(output)) for kind, p in events if kind == "modify" and not _is_temporary(p, output)}
    assert modified <= {"train_log.jsonl"}, modified
    renamed = {str(p.relative_to(output)) for kind, p in events if kind == "rename"}
    assert {"train_log.jsonl", "training_summary.json", "validation/step-2.wav", "transformer", "pipeline"} <= renamed
    assert sf.info(output / "validation" / "step-2.wav").frames == 44100
