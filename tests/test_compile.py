"""`torch.compile` on the pipeline's transformer (`pipe.transformer.compile()`, as with any diffusers model): the
pipeline runs through the compiled forward, gives the eager result within float32 rounding, and a second call of
the same shape reuses the compiled graphs instead of compiling again (the per-step timestep and the CFG pair's
latent comparison are no reason to recompile)."""

import pytest
import torch

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components


def _run(pipe: KlingFoleyPipeline, **kwargs) -> torch.Tensor:
    kwargs = {"prompt": "a door slams", "duration": 1.0, "num_inference_steps": 2, "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).audios


@pytest.mark.filterwarnings("ignore")
def test_compiled_transformer_matches_eager_and_does_not_recompile():
    torch._dynamo.reset()
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    eager = _run(pipe)
    pipe.transformer.compile(dynamic=False)
    forwards = []
    hook = pipe.transformer.register_forward_hook(lambda module, args, output: forwards.append(args[0].shape))
    try:
        compiled = _run(pipe)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        again = _run(pipe)
        graphs_after = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        hook.remove()
        torch._dynamo.reset()
    assert graphs > 0 and graphs_after == graphs  # compiled once, reused by the second call
    assert len(forwards) == 4 and all(shape[0] == 2 for shape in forwards)  # 2 steps x 2 calls, batched CFG
    assert torch.equal(again, compiled)
    assert compiled.abs().max() > 0.1
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
