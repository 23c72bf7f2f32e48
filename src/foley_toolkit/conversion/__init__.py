"""Converters of the public pretrained parts of Kling-Foley into the toolkit's classes, and the assembly of a
pipeline from converted parts (`foley-toolkit convert ...`, `foley-toolkit assemble ...`).

* `convert_bigvgan`: NVIDIA BigVGAN-v2 generator -> diffusers `MMAudioVocoder` (weight norm folded),
* `convert_metaclip`: open_clip MetaCLIP vision tower -> transformers `CLIPVisionModelWithProjection`,
* `convert_t5`: T5 encoder + tokenizer, loaded strictly, checked and copied,
* `convert_synchformer` (in `foley_toolkit.conversion.synchformer`): Synchformer visual branch -> `SynchformerEncoder`,
* `assemble_pipeline`: a `KlingFoleyPipeline` from converted encoders/vocoder plus a new or trained transformer/MelVAE.

Every converter reads checkpoints without unpickling code, refuses missing/unexpected keys and wrong shapes with
an error naming the key, and prints the licence of what it converted (`LICENCES`).
"""

from .assemble import assemble_pipeline, transformer_config_for_components
from .bigvgan import convert_bigvgan
from .common import LICENCES, licence_text
from .metaclip import convert_metaclip
from .synchformer import convert_synchformer
from .t5 import T5_MAX_SEQUENCE_LENGTH, convert_t5

__all__ = [
    "LICENCES",
    "licence_text",
    "T5_MAX_SEQUENCE_LENGTH",
    "assemble_pipeline",
    "transformer_config_for_components",
    "convert_bigvgan",
    "convert_metaclip",
    "convert_synchformer",
    "convert_t5",
]
