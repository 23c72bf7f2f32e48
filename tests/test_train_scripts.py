"""The training scripts end to end, in-process (`main(parse_args([...]))`) on a tiny pipeline and synthetic clips.

Each test names the property it checks: feature caching and resumption, a loadable final pipeline, exact resume,
atomic checkpoints, LoRA files that only hold adapters, Algorithm 2's stages and latent statistics, and that the
losses actually go down on a fixed batch.
"""

from __future__ import annotations

import json
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

from foley_toolkit.audio_utils import sequence_lengths


def _run(script, argv: list) -> dict:
    result = script.main(script.parse_args([str(a) for a in argv]))
    reset_accelerate_state()
    return result


def _transformer_argv(pipeline, features, output, steps, *extra):
    return ["--pretrained_model_name_or_path", pipeline, "--feature_dir", features, "--output_dir", output,
            "--train_batch_size", 2, "--max_train_steps", steps, "--learning_rate", 1e-3, *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Feature extraction
# ------------------------------------------------------------------------------------------------


def test_extract_features_shapes_follow_sequence_lengths_and_rerun_resumes(feature_dir, tiny_pipeline_dir, clip_data_dir):
    import extract_features
    from safetensors.torch import load_file

    from foley_toolkit.data import CachedFeatureDataset

    entries = [json.loads(line) for line in (feature_dir / "index.jsonl").read_text().splitlines()]
    kinds = {e["id"].split("-")[0] for e in entries}
    assert "aug" in kinds and len(entries) >= 4
    assert len({e["latent_frames"] for e in entries}) >= 2, "expected items of different durations"
    for entry in entries:
        tensors = load_file(str(feature_dir / entry["file"]))
        lengths = sequence_lengths(entry["duration"])
        assert tensors["latents_mean"].shape == (8, lengths["latent_frames"]) == tensors["latents_std"].shape
        assert bool((tensors["latents_std"] > 0).all())
        assert tensors["clip_features"].shape[0] == max(1, lengths["clip_frames"])
        assert tensors["sync_features"].shape[0] == lengths["sync_tokens"]
        assert tensors["stereo_mel"].shape == (2, 128, lengths["mel_frames"])
        # Text features are stored unpadded: every stored token is real.
        assert bool(tensors["text_mask"].bool().all()) and tensors["text_embeds"].shape[0] == tensors["text_mask"].shape[0]
    assert len(CachedFeatureDataset(feature_dir)) == len(entries)

    # A rerun skips finished items; a deleted item (and only it) is recomputed, identically.
    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--output_dir", feature_dir, *EXTRACT_ARGS]
    assert _run(extract_features, argv)["num_extracted"] == 0
    victim = feature_dir / entries[0]["file"]
    before = load_file(str(victim))
    victim.unlink()
    (feature_dir / (entries[1]["file"] + ".tmp")).write_bytes(b"partial write")  # a killed earlier run
    result = _run(extract_features, argv)
    assert result["num_extracted"] == 1 and result["num_indexed"] == len(entries)
    after = load_file(str(victim))
    for key in before:
        torch.testing.assert_close(after[key], before[key])


# ------------------------------------------------------------------------------------------------
# Transformer
# ------------------------------------------------------------------------------------------------


def test_train_transformer_writes_loadable_pipeline_with_ema_weights(tmp_path, tiny_pipeline_dir, feature_dir):
    import train_transformer

    from foley_toolkit.pipelines import KlingFoleyPipeline

    output = tmp_path / "run"
    result = _run(
        train_transformer,
        _transformer_argv(tiny_pipeline_dir, feature_dir, output, 2, "--use_ema", "--ema_decay", "0.9",
                          "--validation_steps", 2, "--validation_prompt", "a ball bounces", "--validation_duration", 1.0,
                          "--num_validation_inference_steps", 2, "--gradient_checkpointing",
                          "--duration_batching", "pad", "--gradient_accumulation_steps", 2, "--lr_scheduler", "inverse",
                          "--lr_warmup", 0.5, "--lr_inv_gamma", 10),
    )  # fmt: skip
    assert result["global_step"] == 2 and result["num_processes"] == 1
    assert [h["step"] for h in result["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"])
    # The logged LR is eq. 8 after each optimizer step (accumulation micro-batches do not advance it).
    for h in result["history"]:
        expected = 1e-3 * (1 + h["step"] / 10) ** -0.5 * (1 - 0.5 ** (h["step"] + 1))
        assert abs(h["lr"] - expected) < 1e-9
    assert (output / "validation" / "step-2.wav").is_file()

    pipe = KlingFoleyPipeline.from_pretrained(output / "pipeline")
    base = load_safetensors_dir(tiny_pipeline_dir / "transformer")
    trained = load_safetensors_dir(output / "transformer")
    ema = load_safetensors_dir(output / "transformer_ema")
    pipeline_weights = pipe.transformer.state_dict()
    # The pipeline holds the EMA weights; they differ from both the base and the raw trained weights.
    for name, value in ema.items():
        torch.testing.assert_close(pipeline_weights[name], value, rtol=0, atol=0)
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)
    # The other components are the base pipeline's.
    for name in ("vae", "vocoder"):
        base_weights = load_safetensors_dir(tiny_pipeline_dir / name)
        for key, value in getattr(pipe, name).state_dict().items():
            if key in base_weights:
                torch.testing.assert_close(value, base_weights[key])
    out = pipe(prompt="a ball bounces", duration=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.audios.shape == (1, 2, sequence_lengths(1.0)["num_samples"])


def test_resume_from_latest_checkpoint_matches_uninterrupted_run(tmp_path, tiny_pipeline_dir, feature_dir):
    """Stopped at step 2 and resumed: same step count, weights, EMA, optimizer and LR-scheduler state at step 5 as an
    uninterrupted run — across an epoch boundary, with a stale `.tmp` checkpoint lying around."""
    import train_transformer

    common_args = ("--use_ema", "--checkpointing_steps", 2, "--lr_scheduler", "inverse", "--lr_warmup", 0.5,
                   "--lr_inv_gamma", 10)  # fmt: skip
    full, parts = tmp_path / "full", tmp_path / "parts"
    full_result = _run(train_transformer, _transformer_argv(tiny_pipeline_dir, feature_dir, full, 5, *common_args))
    _run(train_transformer, _transformer_argv(tiny_pipeline_dir, feature_dir, parts, 2, *common_args))
    # A save killed mid-write at a later step must be ignored by `latest`.
    (parts / "checkpoint-4.tmp").mkdir()
    (parts / "checkpoint-4.tmp" / "optimizer.bin").write_bytes(b"truncated")
    resumed = _run(
        train_transformer,
        _transformer_argv(tiny_pipeline_dir, feature_dir, parts, 5, *common_args, "--resume_from_checkpoint", "latest"),
    )
    assert resumed["global_step"] == full_result["global_step"] == 5
    assert [h["step"] for h in resumed["history"]] == [3, 4, 5]
    assert json.loads((parts / "checkpoint-5" / "training_state.json").read_text())["global_step"] == 5
    assert not (parts / "checkpoint-4.tmp").exists()  # the next save at step 4 replaced the stale one
    for a, b in zip(full_result["history"][2:], resumed["history"]):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"]

    for sub in ("transformer", "transformer_ema"):
        expected, actual = load_safetensors_dir(full / "checkpoint-5" / sub), load_safetensors_dir(parts / "checkpoint-5" / sub)
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    assert json.loads((parts / "checkpoint-5" / "transformer_ema" / "config.json").read_text())["optimization_step"] == 5
    optimizer_full = torch.load(full / "checkpoint-5" / "optimizer.bin", weights_only=True)
    optimizer_parts = torch.load(parts / "checkpoint-5" / "optimizer.bin", weights_only=True)
    for index, state in optimizer_full["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(optimizer_parts["state"][index][key], value, rtol=0, atol=0)
    scheduler_full = torch.load(full / "checkpoint-5" / "scheduler.bin", weights_only=True)
    scheduler_parts = torch.load(parts / "checkpoint-5" / "scheduler.bin", weights_only=True)
    assert scheduler_parts["last_epoch"] == scheduler_full["last_epoch"] == 5
    assert scheduler_parts["_last_lr"] == scheduler_full["_last_lr"]


def test_interrupted_checkpoint_write_never_replaces_last_good_one(tmp_path):
    from foley_toolkit import training
    from accelerate import Accelerator

    accelerator = Accelerator()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    training.register_checkpoint_hooks(accelerator, {"linear": training.unwrap_model(accelerator, model)})
    generator = torch.Generator().manual_seed(1)

    training.save_checkpoint(accelerator, tmp_path, 2, generator)
    good_weight = model.weight.detach().clone()
    model.weight.data.add_(1.0)

    real_save_state = accelerator.save_state

    def killed_mid_write(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # the files land in checkpoint-4.tmp ...
        raise KeyboardInterrupt("killed")  # ... and the process dies before the rename

    accelerator.save_state = killed_mid_write
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(accelerator, tmp_path, 4, generator)
    accelerator.save_state = real_save_state
    assert (tmp_path / "checkpoint-4.tmp").is_dir() and not (tmp_path / "checkpoint-4").exists()
    assert training.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"

    class Args:
        output_dir, resume_from_checkpoint = str(tmp_path), "latest"

    assert training.resume_from_checkpoint(accelerator, Args, generator) == 2
    torch.testing.assert_close(model.weight, good_weight, rtol=0, atol=0)
    # The next save at that step starts clean; rotation keeps the newest complete ones only.
    training.save_checkpoint(accelerator, tmp_path, 4, generator, total_limit=1)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["checkpoint-4"]
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint"):
        training.resolve_checkpoint_path(tmp_path, "checkpoint-7")


def test_scale_lr_multiplies_the_learning_rates_by_the_global_batch_size(tmp_path):
    from foley_toolkit import training
    import train_vocoder
    from accelerate import Accelerator

    flags = ["--output_dir", str(tmp_path), "--train_batch_size", "3", "--gradient_accumulation_steps", "2",
             "--learning_rate", "1e-4", "--discriminator_learning_rate", "5e-5"]  # fmt: skip
    accelerator = Accelerator()
    scaled = train_vocoder.parse_args(flags + ["--scale_lr"])
    training.scale_learning_rates(scaled, accelerator)
    assert scaled.learning_rate == pytest.approx(6e-4) and scaled.discriminator_learning_rate == pytest.approx(3e-4)
    plain = train_vocoder.parse_args(flags)
    training.scale_learning_rates(plain, accelerator)
    assert plain.learning_rate == 1e-4 and plain.discriminator_learning_rate == 5e-5


def test_report_to_trackers_get_the_config_and_the_logged_values(tmp_path):
    from foley_toolkit import training
    import train_vae
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class RecordingTracker(GeneralTracker):
        name, requires_logging_directory = "recording", False

        def __init__(self):
            super().__init__()
            self.config, self.logs = None, []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logs.append((step, values))

    args = train_vae.parse_args(["--output_dir", str(tmp_path), "--max_train_steps", "7"])
    recorder = RecordingTracker()
    accelerator = Accelerator(log_with=[recorder])
    training.init_trackers(accelerator, args, "train_vae")
    accelerator.log({"loss": 0.5}, step=3)
    assert recorder.config["max_train_steps"] == 7 and recorder.config["output_dir"] == str(tmp_path)
    assert all(isinstance(v, (int, float, str, bool)) for v in recorder.config.values())
    assert recorder.logs == [(3, {"loss": 0.5})]


def test_transformer_overfits_a_fixed_batch(tiny_pipeline_dir, feature_dir):
    """Algorithm 1's loss on one batch with fixed noise falls by more than half in 10 AdamW steps."""
    import train_transformer
    from utils import get_dummy_components

    from foley_toolkit.data import CachedFeatureDataset, collate_features
    from foley_toolkit.training import FlowMatching

    components = get_dummy_components(seed=0)
    transformer, vae = components["transformer"].train(), components["vae"]
    dataset = CachedFeatureDataset(feature_dir)
    batch = collate_features([dataset[0], dataset[1]])
    args = train_transformer.parse_args(
        ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--feature_dir", str(feature_dir), "--output_dir", "unused",
         "--text_dropout", "0", "--video_dropout", "0"]  # fmt: skip
    )
    objective = FlowMatching.from_args(args)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=5e-3, weight_decay=0.0)
    losses = []
    for _ in range(10):
        generator = torch.Generator().manual_seed(0)  # same latents, noise and timesteps every step
        loss = objective.batch_loss(transformer, vae, batch, generator, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------


def test_train_lora_file_holds_only_adapters_and_unloads_exactly(tmp_path, tiny_pipeline_dir, feature_dir):
    import train_lora
    from safetensors import safe_open

    from foley_toolkit.pipelines import KlingFoleyPipeline

    output = tmp_path / "lora"
    result = _run(
        train_lora,
        _transformer_argv(tiny_pipeline_dir, feature_dir, output, 2, "--rank", 4, "--learning_rate", 1e-2,
                          "--mixed_precision", "bf16", "--gradient_checkpointing"),  # frozen base in bf16
    )
    assert all(h["loss"] > 0 for h in result["history"])
    lora_file = Path(result["lora_file"])
    assert lora_file == output / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora_file), framework="pt") as f:
        keys = list(f.keys())
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    # Every attention layer of the 1 joint + 1 single block: 4 targets x (A, B).
    assert len(keys) == 2 * 4 * 2
    assert metadata["transformer.r"] == 4 and sorted(metadata["transformer.target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]

    pipe = KlingFoleyPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(prompt="a ball bounces", duration=1.0, num_inference_steps=2, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).audios  # fmt: skip

    original = generate()
    pipe.load_lora_weights(output)
    adapted = generate()
    pipe.unload_lora_weights()
    restored = generate()
    assert (adapted - original).abs().max() > 1e-4
    torch.testing.assert_close(restored, original, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Codec: MelVAE, vocoder, Mono2Stereo
# ------------------------------------------------------------------------------------------------

TINY_DISCRIMINATOR = {"channels": [4, 8], "num_scales": 2, "kernel_size": [3, 5]}


@pytest.fixture
def discriminator_config(tmp_path) -> Path:
    path = tmp_path / "discriminator.json"
    path.write_text(json.dumps(TINY_DISCRIMINATOR))
    return path


def test_train_vae_walks_algorithm2_stages_and_writes_latent_statistics(
    tmp_path, tiny_pipeline_dir, clip_data_dir, discriminator_config
):
    import train_vae

    from foley_toolkit.data import FoleyClipDataset
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE
    from foley_toolkit.pipelines import KlingFoleyPipeline
    from foley_toolkit.training_utils import latent_statistics

    output = tmp_path / "vae"
    result = _run(
        train_vae,
        ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--output_dir", output,
         "--discriminator_config", discriminator_config, "--train_batch_size", 2, "--crop_seconds", 0.3,
         "--max_train_steps", 4, "--stage1_end", 1, "--stage2_end", 2, "--stage3_end", 3, "--kl_upper", 0.01,
         "--r1_weight", 0.1, "--segment_seconds", 1.5, "--min_seconds", 0.5,
         "--checkpointing_steps", 1, "--checkpoints_total_limit", 2, "--learning_rate", 1e-2],
    )  # fmt: skip
    history = result["history"]
    assert [h["stage"] for h in history] == [1.0, 2.0, 3.0, 4.0]
    assert "d_loss" not in history[1] and "d_loss" in history[2] and "r1" in history[3]
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    # Stage 4 (step 4) froze the encoder and posterior projection; the decoder kept training.
    step3, step4 = load_safetensors_dir(output / "checkpoint-3" / "vae"), load_safetensors_dir(output / "checkpoint-4" / "vae")
    encoder_keys = [k for k in step3 if k.startswith(("encoder.", "quant_conv."))]
    decoder_keys = [k for k in step3 if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(step3[k], step4[k]) for k in encoder_keys)
    assert any(not torch.equal(step3[k], step4[k]) for k in decoder_keys)

    vae = MelVAE.from_pretrained(output / "vae")
    # The statistics in the config are those of the trained VAE's posterior means over the data.
    dataset = FoleyClipDataset.from_folder(clip_data_dir, segment_seconds=1.5, min_seconds=0.5, load_video=False)
    with torch.no_grad():
        means = [vae.encode(dataset[i]["audio"]).latent_dist.mean for i in range(len(dataset))]
    expected_mean, expected_std = latent_statistics(means)
    torch.testing.assert_close(torch.tensor(vae.config.latents_mean), torch.tensor(expected_mean), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(vae.config.latents_std), torch.tensor(expected_std), rtol=1e-4, atol=1e-5)
    normalized = vae.normalize_latents(torch.cat(means, dim=-1))
    torch.testing.assert_close(normalized.mean(dim=(0, 2)), torch.zeros(8), rtol=0, atol=1e-4)
    # The pipeline written next to it carries the new VAE.
    pipe = KlingFoleyPipeline.from_pretrained(output / "pipeline")
    assert pipe.vae.config.latents_mean == vae.config.latents_mean


def test_melvae_reconstruction_overfits_a_fixed_batch(clip_data_dir):
    """Algorithm 2 stage 1 (mel MSE) on one batch falls by more than half in 8 steps."""
    import train_vae
    from accelerate import Accelerator

    from foley_toolkit.data import FoleyClipDataset
    from foley_toolkit.models.autoencoders.autoencoder_mel_vae import MelVAE
    from foley_toolkit.models.discriminator import MelDiscriminator
    from foley_toolkit.training_utils import codec_loss_weights

    dataset = FoleyClipDataset.from_folder(clip_data_dir, load_video=False, crop_seconds=0.3)
    batch = {"audio": torch.stack([dataset[0]["audio"], dataset[1]["audio"]])}
    accelerator = Accelerator()
    module = train_vae.MelVAETrainingModule(
        MelVAE(latent_channels=8, block_out_channels=(16, 16), layers_per_block=1, kernel_size=3)
    )
    discriminator = MelDiscriminator(**TINY_DISCRIMINATOR)
    optimizer_g = torch.optim.AdamW(module.parameters(), lr=1e-2)
    optimizer_d = torch.optim.AdamW(discriminator.parameters(), lr=1e-2)
    module, discriminator, optimizer_g, optimizer_d = accelerator.prepare(module, discriminator, optimizer_g, optimizer_d)
    scheduler_g = torch.optim.lr_scheduler.LambdaLR(optimizer_g, lambda _: 1.0)
    scheduler_d = torch.optim.lr_scheduler.LambdaLR(optimizer_d, lambda _: 1.0)
    args = train_vae.parse_args(["--output_dir", "unused", "--data_dir", str(clip_data_dir)])
    weights = codec_loss_weights(1, 10, 20, 30, 1e-3, 0.1)
    assert weights.stage == 1
    losses = []
    for _ in range(8):
        logs = train_vae.vae_training_step(
            module, discriminator, batch, weights, args, accelerator, (optimizer_g, optimizer_d),
            (scheduler_g, scheduler_d), torch.Generator().manual_seed(0),
        )  # fmt: skip
        losses.append(logs["mse"])
    assert losses[-1] < 0.5 * losses[0], losses


TINY_MPD = {"periods": [2, 3, 5, 7, 11], "channels": [4, 8], "kernel_size": 5, "stride": 3}
TINY_MRD = {"resolutions": [[512, 128, 512], [1024, 256, 1024]], "channels": 4, "num_strided": 2}


@pytest.fixture
def waveform_discriminator_args(tmp_path) -> list:
    (tmp_path / "mpd.json").write_text(json.dumps(TINY_MPD))
    (tmp_path / "mrd.json").write_text(json.dumps(TINY_MRD))
    return ["--mpd_config", tmp_path / "mpd.json", "--mrd_config", tmp_path / "mrd.json"]


def test_train_vocoder_on_vae_mels_updates_vocoder(tmp_path, tiny_pipeline_dir, clip_data_dir, waveform_discriminator_args):
    import train_vocoder

    from foley_toolkit.models.vocoder import MMAudioVocoder

    output = tmp_path / "vocoder"
    result = _run(
        train_vocoder,
        ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--output_dir", output,
         *waveform_discriminator_args, "--train_batch_size", 2, "--crop_seconds", 0.25,
         "--max_train_steps", 2, "--mel_source", "vae"],
    )  # fmt: skip
    assert [h["step"] for h in result["history"]] == [1, 2]
    assert all(k in result["history"][0] for k in ("mel_l1", "stft", "d_loss", "d_mpd", "d_mrd", "g_loss", "fm_loss"))
    trained = MMAudioVocoder.from_pretrained(output / "vocoder")
    base = load_safetensors_dir(tiny_pipeline_dir / "vocoder")
    assert any(not torch.equal(v, base[k]) for k, v in trained.state_dict().items() if k in base)
    assert (output / "pipeline" / "vocoder").is_dir()
    assert (output / "mpd" / "config.json").is_file() and (output / "mrd" / "config.json").is_file()


def test_train_vocos_gan_schedule_resume_and_pipeline(tmp_path, tiny_pipeline_dir, clip_data_dir, waveform_discriminator_args):
    """`--vocoder_type vocos` builds a fresh VocosVocoder, warms the discriminators up one step before the generator
    sees them, resumes exactly (2 steps + 1 resumed = 3 uninterrupted, bit for bit, with energy-weighted crops) and
    writes a pipeline whose model_index.json names the new vocoder class."""
    import train_vocoder

    from foley_toolkit.models.vocoder_vocos import VocosVocoder
    from foley_toolkit.pipelines import KlingFoleyPipeline

    def argv(output, steps):
        return ["--vocoder_type", "vocos", "--vocoder_config", "tiny", "--data_dir", clip_data_dir,
                "--output_dir", output, *waveform_discriminator_args, "--train_batch_size", 2, "--crop_seconds", 0.25,
                "--max_train_steps", steps, "--discriminator_start_step", 1, "--gan_start_step", 2,
                "--stft_loss_weight", 0, "--learning_rate", 1e-3, "--pretrained_model_name_or_path", tiny_pipeline_dir,
                "--resume_from_checkpoint", "latest", "--crop_sampling", "energy"]  # fmt: skip

    full = _run(train_vocoder, argv(tmp_path / "full", 3))["history"]
    assert "d_loss" not in full[0] and "g_loss" not in full[0] and "stft" not in full[0]
    assert "d_loss" in full[1] and "g_loss" not in full[1]
    assert "d_loss" in full[2] and "g_loss" in full[2] and "fm_loss" in full[2]
    _run(train_vocoder, argv(tmp_path / "split", 2))
    resumed = _run(train_vocoder, argv(tmp_path / "split", 3))["history"]
    assert [h["step"] for h in resumed] == [3]
    assert resumed[0]["loss"] == full[2]["loss"]
    for name in ("vocoder", "mpd", "mrd"):
        a, b = load_safetensors_dir(tmp_path / "full" / name), load_safetensors_dir(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    vocoder = VocosVocoder.from_pretrained(tmp_path / "full" / "vocoder")
    assert vocoder.config.dim == 32 and vocoder.config.mel_magnitude_prior
    index = json.loads((tmp_path / "full" / "pipeline" / "model_index.json").read_text())
    assert index["vocoder"] == ["foley_toolkit.models.vocoder_vocos", "VocosVocoder"]
    pipe = KlingFoleyPipeline.from_pretrained(tmp_path / "full" / "pipeline")
    assert isinstance(pipe.vocoder, VocosVocoder)


def test_train_vocoder_rejects_bad_gan_schedule_and_wrong_vocoder_folder(tmp_path, tiny_pipeline_dir):
    import train_vocoder

    with pytest.raises(ValueError, match="discriminator_start_step"):
        train_vocoder.parse_args(["--output_dir", str(tmp_path), "--gan_start_step", "2", "--discriminator_start_step", "3"])
    args = train_vocoder.parse_args(["--output_dir", str(tmp_path), "--vocoder_type", "vocos",
                                     "--vocoder", str(tiny_pipeline_dir / "vocoder")])  # fmt: skip
    with pytest.raises(ValueError, match="VocosVocoder"):
        train_vocoder.load_vocoder(args)


def test_train_mono2stereo_with_cached_video_features(tmp_path, tiny_pipeline_dir, clip_data_dir, feature_dir):
    import train_mono2stereo

    from foley_toolkit.models.mono2stereo import Mono2Stereo
    from foley_toolkit.training import build_clip_dataset

    dataset = train_mono2stereo.StereoCropDataset(
        build_clip_dataset(
            train_mono2stereo.parse_args(["--output_dir", "x", "--data_dir", str(clip_data_dir)]),
            segment_seconds=1.5, min_seconds=0.5, load_video=False, mono=False, crop_seconds=0.5,
        ),
        str(feature_dir),
    )  # fmt: skip
    example = dataset[0]
    assert example["audio"].shape == (2, sequence_lengths(0.5)["num_samples"])
    assert example["clip_features"].shape == (4, 32)

    output = tmp_path / "m2s"
    result = _run(
        train_mono2stereo,
        ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--data_dir", clip_data_dir, "--feature_dir", feature_dir,
         "--output_dir", output, "--train_batch_size", 2, "--crop_seconds", 0.5, "--max_train_steps", 2,
         "--segment_seconds", 1.5, "--min_seconds", 0.5, "--learning_rate", 1e-2, "--mel_source", "vae"],
    )  # fmt: skip
    assert [h["step"] for h in result["history"]] == [1, 2]
    trained = Mono2Stereo.from_pretrained(output / "mono2stereo")
    base = load_safetensors_dir(tiny_pipeline_dir / "mono2stereo")
    assert not torch.equal(trained.ratio_out.weight, base["ratio_out.weight"])
    # The video branch trained too: the cached CLIP features reached the module.
    assert not torch.equal(trained.video_proj.weight, base["video_proj.weight"])


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import load_config_from_file

    from foley_toolkit.models.transformers import transformer_foley_mmdit

    path = Path(__file__).resolve().parents[1] / "training" / "configs" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    expected = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert str(config.distributed_type).split(".")[-1] == expected
    if name == "fsdp":
        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert sorted(wrapped) == sorted(transformer_foley_mmdit.FoleyMMDiTTransformer._no_split_modules)
        assert all(hasattr(transformer_foley_mmdit, cls) for cls in wrapped)
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2
