"""Shared test fixtures: a tiny real `KlingFoleyPipeline` and small test videos.

The builders live in the package (`foley_toolkit.pipelines.kling_foley.testing`) so that the examples' `--tiny`
mode uses the same components; this module re-exports them for the tests of every engineer.

    from tests.utils import get_dummy_components, make_test_video
    pipe = KlingFoleyPipeline(**get_dummy_components())          # stereo; stereo=False -> mono
    make_test_video(tmp_path / "clip.mp4", duration=1.7, fps=29.97, audio=True)
"""

from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components, make_test_video


__all__ = ["get_dummy_components", "make_test_video"]
