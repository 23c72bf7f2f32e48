# Written by foley_toolkit's `KlingFoleyPipeline.save_pretrained` so that diffusers' generic loader
# finds this class:  DiffusionPipeline.from_pretrained(<this folder or Hub id>, trust_remote_code=True)
# It defines nothing: it imports the installed package (`pip install foley_toolkit`).
from foley_toolkit.models.mono2stereo import Mono2Stereo

__all__ = ["Mono2Stereo"]
