"""foley_toolkit: Kling-Foley video-to-audio generation as diffusers-compatible pieces.

Component modules are imported eagerly: diffusers 0.42 resolves pipeline components through the
module paths stored in ``model_index.json`` and no longer imports them lazily.
"""

__version__ = "0.1.0"

# --- models (each helper/issue adds its own exports below its heading) ---
# transformer
from .models.transformers.transformer_foley_mmdit import FoleyMMDiTConditions, FoleyMMDiTTransformer

# codec (MelVAE, mel front end, vocoder, Mono2Stereo)

# encoders

# --- pipelines ---

