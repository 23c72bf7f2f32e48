"""Pipelines: [`KlingFoleyPipeline`] and its output class / LoRA loader mixin."""

from .kling_foley import KlingFoleyLoraLoaderMixin, KlingFoleyPipeline, KlingFoleyPipelineOutput


__all__ = ["KlingFoleyLoraLoaderMixin", "KlingFoleyPipeline", "KlingFoleyPipelineOutput"]
