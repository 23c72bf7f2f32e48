from .lora import KlingFoleyLoraLoaderMixin
from .pipeline_kling_foley import KlingFoleyPipeline
from .pipeline_output import KlingFoleyPipelineOutput


__all__ = ["KlingFoleyLoraLoaderMixin", "KlingFoleyPipeline", "KlingFoleyPipelineOutput"]
