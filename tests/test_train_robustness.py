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
    reset_accelerate_state,
    tiny_pipeline_dir,
)


def _run(script, argv: list) -> dict:
    try:
        return script.main(script.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate_state()


def _transformer_argv(pipeline, features, output, *extra):
    return ["--pretrained_model_name_or_path", pipeline, "--feature_dir", features, "--output_dir", output,
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
    assert sum(entry["bad_items"] for entry in log) == 1 and sum(entry["skipped_batches"] for entry in log) == 0
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert _all_finite(skipped / "transformer") and _all_finite(skipped / "pipeline" / "transformer")

    # Batches of one: the bad item's batch is empty, that step is skipped (and still counted, for exact resumes).
    alone = tmp_path / "alone"
    result = _run(train_transformer, _transformer_argv(tiny_pipeline_dir, features, alone, "--num_train_epochs", 1,
                                                       "--skip_bad_items", "--train_batch_size", 1))  # fmt: skip
    assert result["global_step"] == num_items
    assert [h["bad_items"] for h in result["history"]].count(1.0) == 1
    assert [h["skipped_batches"] for h in result["history"]] == [h["bad_items"] for h in result["history"]]
    assert _all_finite(alone / "transformer")


class _Args:
    """The flags `run_training_loop` reads."""

    def __init__(self, output_dir, skip_bad_items):
        self.output_dir, self.skip_bad_items = str(output_dir), skip_bad_items
        self.gradient_accumulation_steps, self.logging_steps, self.checkpointing_steps = 1, 1, 1
        self.checkpoints_total_limit, self.seed = 2, 0


def _nan_loss_run(output_dir, skip_bad_items: bool, bad_steps: tuple = (3,)):
    """A linear regression through `training.run_training_loop` whose loss is NaN at the optimizer steps `bad_steps`."""
    from foley_toolkit import training
    from accelerate import Accelerator

    from foley_toolkit.data import LengthGroupedBatchSampler

    accelerator = Accelerator()
    model = torch.nn.Linear(3, 1)
    training.register_checkpoint_hooks(accelerator, {"linear": model})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    dataset = [{"id": f"row{i}", "x": torch.full((3,), float(i))} for i in range(8)]
    sampler = LengthGroupedBatchSampler([1] * 8, batch_size=2, shuffle=False, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    weights = {}

    def training_step(batch, step):
        loss = model(batch["x"]).pow(2).mean()
        if step + 1 in bad_steps:
            loss = loss * float("nan")
        training.backward_and_step(accelerator, loss, model.parameters(), optimizer, scheduler, 1.0)
        return {"loss": loss.item()}

    def on_step(step):
        weights[step] = training.unwrap_model(accelerator, model).weight.detach().clone()

    args = _Args(output_dir, skip_bad_items)
    result = training.run_training_loop(accelerator, args, loader, sampler, training_step, [model], 4, 4, 0, None, on_step)
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
    assert global_step == 4 and [h["skipped_batches"] for h in history] == [0.0, 0.0, 1.0, 0.0]
    assert [h["bad_items"] for h in history] == [0.0] * 4
    # The skipped step left the weights as they were; the next step trained again.
    torch.testing.assert_close(weights[3], weights[2], rtol=0, atol=0)
    assert not torch.equal(weights[4], weights[3])
    summary = json.loads((tmp_path / "skip" / "training_summary.json").read_text())
    assert summary["num_skipped_batches"] == 1 and summary["skipped_batches"][0]["ids"] == ["row4", "row5"]
    assert _all_finite(tmp_path / "skip" / "checkpoint-4" / "linear")
    reset_accelerate_state()
    # Skipping is for a few bad batches: a run in which every step is skipped fails instead of "completing".
    with pytest.raises(ValueError, match="skipped every step of this run"):
        _nan_loss_run(tmp_path / "all", skip_bad_items=True, bad_steps=(1, 2, 3, 4))


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
    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, *EXTRACT_ARGS]
    with pytest.raises(ValueError, match=rf"{poisoned_id}.*text_embeds"):
        _run(extract_features, [*argv, "--output_dir", tmp_path / "stop"])
    result = _run(extract_features, [*argv, "--output_dir", tmp_path / "skip", "--skip_bad_items"])
    assert result["num_bad_items"] == 1 and result["bad_items"][0]["id"] == poisoned_id
    assert result["num_indexed"] == result["num_items"] - 1
    ids = [e["id"] for e in _entries(tmp_path / "skip")]
    assert poisoned_id not in ids and len(ids) == result["num_indexed"]
    summary = json.loads((tmp_path / "skip" / "extraction_summary.json").read_text())
    assert summary["num_bad_items"] == 1
    # Skipping is for a few bad items: when every item is bad the run fails instead of leaving an empty cache.
    monkeypatch.setattr(extract_features, "extract_item", lambda *a: (_ for _ in ()).throw(RuntimeError("decoder bug")))
    with pytest.raises(ValueError, match=r"Every item to extract was bad .*decoder bug"):
        _run(extract_features, [*argv, "--output_dir", tmp_path / "all", "--skip_bad_items"])


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
        if not hasattr(self.libc, "inotify_init1"):
            pytest.skip("inotify is Linux only")
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
                               "--validation_duration", 1.0, "--validation_prompt", "a ball bounces",
                               "--num_validation_inference_steps", 2))  # fmt: skip
    finally:
        stop.set()
        reader.join()
        events = watcher.close()
    assert not partial_reads, partial_reads
    final = [(kind, str(p.relative_to(output))) for kind, p in events if not _is_temporary(p, output)]
    created_in_place = sorted({path for kind, path in final if kind == "create"})
    assert created_in_place == [], created_in_place
    modified = {path for kind, path in final if kind == "modify"}
    assert modified <= {"train_log.jsonl"}, modified
    renamed = {str(p.relative_to(output)) for kind, p in events if kind == "rename"}
    assert {"train_log.jsonl", "training_summary.json", "validation/step-2.wav", "transformer", "pipeline"} <= renamed
    assert sf.info(output / "validation" / "step-2.wav").frames == 44100


# ------------------------------------------------------------------------------------------------
# Item 3: a trained pipeline carries its own model card, not the base pipeline's card and metrics
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def carded_base_pipeline(tmp_path, tiny_pipeline_dir) -> Path:
    """The tiny pipeline with a demo card and metrics of its own (what a published base pipeline has)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_pipeline_dir, base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# Demo pipeline\nonset F1 0.49 on held-out clips\n")
    (base / "eval_sync.json").write_text(json.dumps({"onset_f1": 0.49}))
    return base


def _check_card(pipeline: Path, script: str, summary: dict, data: Path, base: Path) -> str:
    from huggingface_hub import ModelCard

    assert not (pipeline / "eval_sync.json").exists()
    card = ModelCard.load(pipeline / "README.md")
    assert card.data.library_name == "diffusers" and "foley_toolkit" in card.data.tags
    assert card.data.license is None  # nothing of the base card's metadata either
    text = card.text
    assert "onset F1" not in text and "Demo pipeline" not in text
    assert f"| script | {script} |" in text and f"| base model | {base} |" in text
    assert f"| steps | {summary['global_step']} |" in text and "| seed | 0 |" in text
    assert f"| final loss | {summary['final_logs']['loss']:.6g} |" in text
    assert str(data) in text
    import datetime

    assert f"| date | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}" in text
    return text


def test_trained_pipelines_have_a_fresh_model_card(tmp_path, carded_base_pipeline, feature_dir, clip_data_dir):
    import train_mono2stereo
    import train_transformer

    from foley_toolkit.pipelines import KlingFoleyPipeline

    output = tmp_path / "transformer"
    _run(train_transformer, ["--pretrained_model_name_or_path", carded_base_pipeline, "--feature_dir", feature_dir,
                             "--output_dir", output, "--train_batch_size", 2, "--max_train_steps", 2])  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["global_step"] == 2
    text = _check_card(output / "pipeline", "train_transformer.py", summary, feature_dir, carded_base_pipeline)
    assert "`transformer`" in text
    assert isinstance(KlingFoleyPipeline.from_pretrained(output / "pipeline"), KlingFoleyPipeline)
    # diffusers' generic loader needs the re-export file of the replaced component too
    module = json.loads((output / "pipeline" / "model_index.json").read_text())["transformer"][0]
    assert (output / "pipeline" / "transformer" / f"{module}.py").is_file()
    from diffusers import DiffusionPipeline

    generic = DiffusionPipeline.from_pretrained(output / "pipeline", trust_remote_code=True)
    assert type(generic) is KlingFoleyPipeline

    output = tmp_path / "m2s"
    _run(train_mono2stereo, ["--pretrained_model_name_or_path", carded_base_pipeline,
                             "--data_dir", clip_data_dir, "--output_dir", output, "--train_batch_size", 2,
                             "--crop_seconds", 0.5, "--max_train_steps", 2, "--segment_seconds", 1.5,
                             "--min_seconds", 0.5, "--seed", 0])  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    text = _check_card(output / "pipeline", "train_mono2stereo.py", summary, clip_data_dir, carded_base_pipeline)
    assert "`mono2stereo`" in text


# ------------------------------------------------------------------------------------------------
# Item 4: trackers get scalars and validation audio; --push_to_hub in every script
# ------------------------------------------------------------------------------------------------


class _HubCalls:
    """`HfApi.create_repo` / `upload_folder` stand-ins that record their calls (no network)."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.repos, self.uploads = [], []
        calls = self

        def create_repo(api, repo_id, **kwargs):
            calls.repos.append({"repo_id": repo_id, "token": api.token, **kwargs})

            class RepoUrl(str):
                pass

            url = RepoUrl(f"https://huggingface.co/{repo_id}")
            url.repo_id = repo_id
            return url

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls.uploads.append({"repo_id": repo_id, "folder_path": Path(folder_path), "files": files, **kwargs})

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_tensorboard_gets_scalars_and_the_validation_audio_and_the_pipeline_is_pushed(
    tmp_path, tiny_pipeline_dir, feature_dir, monkeypatch
):
    import io
    import wave

    import numpy as np
    import soundfile as sf
    import train_transformer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hub = _HubCalls(monkeypatch)
    output = tmp_path / "run"
    _run(train_transformer,
         _transformer_argv(tiny_pipeline_dir, feature_dir, output, "--max_train_steps", 3, "--report_to", "tensorboard",
                           "--validation_steps", 3, "--validation_duration", 1.0, "--validation_prompt", "a ball bounces",
                           "--num_validation_inference_steps", 2, "--push_to_hub", "--hub_model_id", "me/my-foley",
                           "--hub_token", "hf_test"))  # fmt: skip

    (event_file,) = (output / "logs" / "train_transformer").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"audio": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert sorted(events.Tags()["audio"]) == ["validation/left", "validation/right"]
    written, rate = sf.read(output / "validation" / "step-3.wav", dtype="float32")
    peak_dbfs = 20 * np.log10(np.abs(written).max())
    assert peak_dbfs > -60, f"validation audio is silence ({peak_dbfs:.1f} dBFS)"
    for channel, tag in enumerate(["validation/left", "validation/right"]):
        (logged,) = events.Audio(tag)
        assert logged.step == 3 and logged.sample_rate == rate == 44100 and logged.length_frames == 44100
        with wave.open(io.BytesIO(logged.encoded_audio_string)) as f:
            samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32767
        # The tracker holds the clip written to validation/ (16-bit in both).
        np.testing.assert_allclose(samples, written[:, channel], atol=2 / 32767)

    assert hub.repos == [{"repo_id": "me/my-foley", "token": "hf_test", "exist_ok": True}]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "me/my-foley" and upload["folder_path"] == output / "pipeline"
    assert "README.md" in upload["files"] and "model_index.json" in upload["files"]
    assert any(f.startswith("transformer/") and f.endswith(".safetensors") for f in upload["files"])


def test_lora_push_uploads_the_adapter_and_card_without_checkpoints(tmp_path, tiny_pipeline_dir, feature_dir, monkeypatch):
    import fnmatch

    import train_lora

    hub = _HubCalls(monkeypatch)
    output = tmp_path / "my-lora"
    _run(train_lora, _transformer_argv(tiny_pipeline_dir, feature_dir, output, "--max_train_steps", 2, "--rank", 2,
                                       "--checkpointing_steps", 1, "--push_to_hub"))  # fmt: skip
    assert hub.repos[0]["repo_id"] == "my-lora"  # the --output_dir name without --hub_model_id
    (upload,) = hub.uploads
    assert upload["folder_path"] == output
    uploaded = [f for f in upload["files"] if not any(fnmatch.fnmatch(f, p) for p in upload["ignore_patterns"])]
    assert "pytorch_lora_weights.safetensors" in uploaded and "README.md" in uploaded
    assert not [f for f in uploaded if f.startswith("checkpoint-")]
    assert "train_lora.py" in (output / "README.md").read_text()


@pytest.mark.parametrize(
    "script", ["train_transformer", "train_lora", "train_vae", "train_vocoder", "train_mono2stereo", "train_sync_encoder"]
)
def test_every_training_script_has_the_hub_flags(script, tmp_path):
    module = __import__(script)
    required = {"train_transformer": ["--pretrained_model_name_or_path", "p", "--feature_dir", "f"],
                "train_lora": ["--pretrained_model_name_or_path", "p", "--feature_dir", "f"]}.get(script, [])  # fmt: skip
    args = module.parse_args([*required, "--output_dir", str(tmp_path), "--push_to_hub", "--hub_model_id", "me/x",
                              "--hub_token", "t", "--skip_bad_items"])  # fmt: skip
    assert args.push_to_hub and args.hub_model_id == "me/x" and args.hub_token == "t" and args.skip_bad_items


# ------------------------------------------------------------------------------------------------
# Item 10: unreadable clips, dropped clips, unwritable folders, full disks
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def broken_clip_dir(tmp_path, clip_data_dir) -> Path:
    """The synthetic clips with clip_00001's audio replaced by garbage (fails when decoded) and an extra row whose
    video is not a media file at all (fails when its duration is probed)."""
    data = tmp_path / "clips"
    shutil.copytree(clip_data_dir, data)
    (data / "clip_00001.wav").write_bytes(b"RIFF" + os.urandom(2000))
    (data / "broken.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    with open(data / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "broken.mp4", "caption": "a door slams"}) + "\n")
    return data


def test_unreadable_clips_stop_extraction_or_are_skipped_and_counted(tmp_path, tiny_pipeline_dir, broken_clip_dir):
    import extract_features

    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", broken_clip_dir, *EXTRACT_ARGS]
    with pytest.raises(Exception, match="broken.mp4"):
        _run(extract_features, [*argv, "--output_dir", tmp_path / "stop"])
    result = _run(extract_features, [*argv, "--output_dir", tmp_path / "skip", "--skip_bad_items"])
    assert result["num_unreadable_clips"] == 1 and result["unreadable_clips"][0]["file"] == "broken.mp4"
    # Every item made from clip_00001 (its segment, and any joined or augmented item using it) is skipped.
    assert result["num_bad_items"] >= 1
    for record in result["bad_items"]:
        assert "clip_00001.wav" in record["file"] and record["reason"]
    assert result["num_indexed"] == result["num_items"] - result["num_bad_items"]
    assert all("clip_00001" not in e["id"] for e in _entries(tmp_path / "skip") if not e["id"].startswith(("concat", "aug")))
    # Without the broken row, the undecodable audio alone stops a run, naming the file.
    rows = (broken_clip_dir / "metadata.jsonl").read_text().splitlines()[:-1]
    (broken_clip_dir / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"clip_00001.*clip_00001\.wav.*--skip_bad_items"):
        _run(extract_features, [*argv, "--output_dir", tmp_path / "stop2"])


def test_codec_training_skips_unreadable_clips(tmp_path, broken_clip_dir):
    import train_vocoder

    output = tmp_path / "vocoder"
    result = _run(
        train_vocoder,
        ["--vocoder_type", "vocos", "--vocoder_config", "tiny", "--data_dir", broken_clip_dir, "--output_dir", output,
         "--train_batch_size", 2, "--crop_seconds", 0.25, "--num_train_epochs", 1, "--gan_weight", 0,
         "--stft_loss_weight", 0, "--segment_seconds", 1.5, "--min_seconds", 0.5, "--skip_bad_items"],
    )  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_unreadable_clips"] == 1
    assert summary["num_bad_items"] == 1 and "clip_00001.wav" in summary["bad_items"][0]["file"]
    assert sum(h["bad_items"] for h in result["history"]) == 1
    assert _all_finite(output / "vocoder")


def test_short_and_uncaptioned_clips_are_counted_and_warned_once(tmp_path, clip_data_dir, caplog):
    import logging

    from foley_toolkit import training

    data = tmp_path / "clips"
    shutil.copytree(clip_data_dir, data)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    extra = [{"file_name": "clip_00002.wav", "caption": ""}, {"file_name": "clip_00003.wav", "caption": " "}]
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    short = [r for r in rows if r["duration"] < 1.8]
    assert 0 < len(short) < len(rows)

    class Args:
        data_dir, hf_dataset, seed, skip_bad_items = str(data), None, 0, False

    with caplog.at_level(logging.WARNING):
        dataset = training.build_clip_dataset(Args, segment_seconds=None, min_seconds=1.8, load_video=False)
    report = dataset.data_report
    # The short video clips and the audio-only rows made from them are dropped.
    short_audio = [e for e in extra if any(r["audio_file"] == e["file_name"] for r in short)]
    assert report["num_short_clips_dropped"] == len(short) + len(short_audio)
    assert len(dataset) == len(rows) + len(extra) - report["num_short_clips_dropped"]
    assert report["num_uncaptioned_audio_only"] == 2
    dropped = [r for r in caplog.records if "shorter than --min_seconds" in r.getMessage()]
    uncaptioned = [r for r in caplog.records if "no caption" in r.getMessage()]
    assert len(dropped) == 1 and f"{report['num_short_clips_dropped']} clips" in dropped[0].getMessage()
    assert len(uncaptioned) == 1 and "2 audio-only clips" in uncaptioned[0].getMessage()


def _unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot write to (root ignores file modes: use /sys, read-only for it)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return folder
    (folder / "probe").unlink()
    return Path("/sys/kernel")


def test_unwritable_output_dir_fails_at_startup(tmp_path, tiny_pipeline_dir):
    import extract_features
    import train_vocoder

    folder = _unwritable_folder(tmp_path)
    # The data folder does not exist either: the output folder is checked first, before any work.
    with pytest.raises(ValueError, match=r"--output_dir.*not a writable folder"):
        _run(train_vocoder, ["--vocoder_type", "vocos", "--data_dir", tmp_path / "nowhere", "--output_dir", folder])
    with pytest.raises(ValueError, match=r"--output_dir.*not a writable folder"):
        _run(extract_features, ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", tmp_path / "nowhere",
                                "--output_dir", folder / "features"])  # fmt: skip


def test_a_full_disk_error_names_the_file(tmp_path, tiny_pipeline_dir, clip_data_dir, monkeypatch):
    from foley_toolkit import training
    import extract_features
    from accelerate import Accelerator

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extract_features, "save_file", disk_full)
    output = tmp_path / "features"
    message = r"No space left on device \(while writing .*features/clip_00000_0\.safetensors\)"
    with pytest.raises(OSError, match=message) as caught:
        _run(extract_features, ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir,
                                "--output_dir", output, *EXTRACT_ARGS])  # fmt: skip
    assert caught.value.errno == errno.ENOSPC
    assert not [p.name for p in output.iterdir() if p.name.endswith(".safetensors") or ".tmp" in p.name]

    accelerator = Accelerator()
    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(OSError, match=r"No space left on device \(while writing .*checkpoint-2\.tmp\)"):
        training.save_checkpoint(accelerator, tmp_path / "run", 2)


def test_a_missing_tracker_package_fails_at_startup(tmp_path, monkeypatch):
    import accelerate.utils
    from foley_toolkit import training
    import train_vocoder

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    args = train_vocoder.parse_args(["--output_dir", str(tmp_path), "--report_to", "tensorboard"])
    with pytest.raises(ValueError, match=r"--report_to tensorboard.*foley_toolkit\[train\]"):
        training.setup_accelerator(args)


def test_sync_encoder_skips_unreadable_clips_and_writes_a_fresh_card(
    tmp_path, carded_base_pipeline, broken_clip_dir, clip_data_dir
):
    import train_sync_encoder

    output = tmp_path / "sync"
    _run(train_sync_encoder,
         ["--pretrained_model_name_or_path", carded_base_pipeline, "--data_dir",
          broken_clip_dir, "--output_dir", output, "--num_train_epochs", 1, "--num_segments", 1,
          "--num_offset_classes", 3, "--offset_step", 0.16, "--head_hidden_size", 16, "--head_heads", 2,
          "--audio_channels", 32, "--audio_layers", 1, "--train_batch_size", 2, "--skip_bad_items",
          "--validation_data_dir", clip_data_dir, "--validation_windows", 1])  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_unreadable_clips"] == 1 and summary["unreadable_clips"][0]["file"] == "broken.mp4"
    (record,) = summary["bad_items"]  # the window of the clip whose audio cannot be decoded, named by its clip
    assert record["id"] == "clip_00001" and "clip_00001.wav" in record["file"]
    _check_card(output / "pipeline", "train_sync_encoder.py", summary, broken_clip_dir, carded_base_pipeline)
    assert json.loads((output / "validation.json").read_text())[-1]["step"] == summary["global_step"]
