"""foley_toolkit: Kling-Foley video-to-audio generation as diffusers-compatible pieces.

Component modules are imported eagerly: diffusers 0.42 resolves pipeline components through the
module paths stored in ``model_index.json`` and no longer imports them lazily.
"""

__version__ = "0.1.0"

# --- models ---
# transformer
from .models.transformers.transformer_foley_mmdit import FoleyMMDiTConditions, FoleyMMDiTTransformer

# codec (MelVAE, mel front end, vocoder, Mono2Stereo)
from .audio_utils import load_audio, save_audio, sequence_lengths
from .models.autoencoders.autoencoder_mel_vae import DiagonalGaussianDistribution1D, LogMelSpectrogram, MelVAE
from .models.discriminator import MelDiscriminator
from .models.mono2stereo import Mono2Stereo, Mono2StereoOutput
from .models.vocoder import (
    MMAudioVocoder,
    bigvgan_v2_44khz_128band_512x_config,
    build_vocoder,
    tiny_vocoder_config,
    vocode,
)
from .models.vocoder_vocos import VocosVocoder, tiny_vocos_config, vocos_small_config
from .models.discriminator import MultiPeriodDiscriminator, MultiResolutionDiscriminator

# encoders
from .models.encoders import (
    SynchformerEncoder,
    build_sync_encoder,
    build_text_encoder,
    build_tiny_t5_tokenizer,
    build_vision_encoder,
    clip_vit_b_16_config,
    metaclip_bigg_14_quickgelu_config,
    synchformer_vit_b_16_config,
    t5_base_config,
    tiny_metaclip_config,
    tiny_synchformer_config,
    tiny_t5_config,
)
from .utils.video_io import VideoAudioMuxer, VideoInput, load_video, write_video_with_audio
from .video_processor import FoleyVideoProcessor, preprocess_clip_frames, preprocess_sync_frames

# --- pipelines ---
from .pipelines import KlingFoleyLoraLoaderMixin, KlingFoleyPipeline, KlingFoleyPipelineOutput

