"""Former home of the training helpers, kept so that ``from foley_toolkit.training_utils import X`` keeps working.
They live in the `foley_toolkit.training` package; import them from there."""

from .training.codec_losses import (  # noqa: F401
    CodecLossWeights,
    codec_loss_weights,
    feature_matching_loss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    latent_statistics,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    margin_kl_loss,
    mel_mse_loss,
    mono2stereo_loss,
    multi_resolution_stft_loss,
    r1_gradient_penalty,
    set_codec_encoder_trainable,
)
from .training.data import pad_sequences  # noqa: F401
from .training.flow_matching import (  # noqa: F401
    FlowMatching,
    condition_dropout_masks,
    flow_matching_inputs,
    masked_mse_loss,
    sample_flow_matching_sigmas,
)
from .training.optimization import InverseLRLambda, get_inverse_lr_scheduler  # noqa: F401
from .training.outputs import (  # noqa: F401
    TEMPORARY_MARKER,
    atomic_output,
    atomic_save_pretrained,
    atomic_write_text,
    non_finite_tensors,
    replace_path,
)
