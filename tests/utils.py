"""Shared test fixtures: a tiny real `KlingFoleyPipeline` and small test videos.

The builders live in the package (`foley_toolkit.pipelines.kling_foley.testing`) so that the examples' `--tiny`
mode uses the same components; this module re-exports them for the tests.

    from tests.utils import get_dummy_components, make_test_video
    pipe = KlingFoleyPipeline(**get_dummy_components())          # stereo; stereo=False -> mono
    make_test_video(tmp_path / "clip.mp4", duration=1.7, fps=29.97, audio=True)
"""

from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components, make_test_video


__all__ = ["RELOAD_ATOL", "RELOAD_RTOL", "assert_same_weights", "get_dummy_components", "make_test_video"]

# Two module objects with bit-identical weights can still differ in the last bits of their outputs: the BLAS and
# oneDNN kernels choose blocking by CPU (AVX-512 vs AMX) and by buffer alignment, and a reloaded model's weights
# live in other buffers. Round trips therefore assert the weights exactly and the outputs within this tolerance;
# comparisons that reuse the same module objects on the same call path stay exact.
RELOAD_ATOL = 1e-5
RELOAD_RTOL = 1e-5


def assert_same_weights(model_a, model_b):
    """Assert that two modules hold bit-identical parameters and buffers under the same names."""
    import torch

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=0, atol=0, msg=f"weight {name} differs")


def assert_cli_error(argv: list[str], message: str, capsys) -> str:
    """`foley-toolkit <argv>` answers bad input with exit code 2 and one stderr line that matches `message` (a
    regex), never a traceback. Returns that line."""
    import re

    from foley_toolkit.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"foley-toolkit {argv[0]}: error: ") and re.search(message, lines[0]), lines[0]
    return lines[0]
