"""`foley-toolkit app`: the action behind the Generate button (results, progress, errors) with the tiny pipeline, the
command's errors, and the page end to end in a real browser (system Chromium driven by Playwright)."""

import os
import shutil
import socket
import tempfile
import time

import av
import numpy as np
import pytest
import soundfile as sf

from utils import assert_cli_error, make_test_video


gr = pytest.importorskip("gradio", reason="the app needs gradio: pip install 'foley-toolkit[app]'")
pytest.importorskip("matplotlib", reason="the app's spectrogram needs matplotlib")

from foley_toolkit.commands.app import DEMO_VIDEO, FoleyApp, build_app


SAMPLE_RATE = 44100


@pytest.fixture
def app(pipe, tmp_path):
    return FoleyApp(pipe, tmp_path / "results", max_seconds=2.0)


def _audio_track(path) -> tuple[int, int, float]:
    """(channels, sample rate, decoded seconds) of the audio track of a media file."""
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.channels, stream.rate, samples / stream.rate


def test_generate_text_to_audio_with_progress(app):
    calls = []
    result = app.generate(None, "rain", "", 3, 1.0, 7, 0.5, progress=lambda value, desc: calls.append(value))
    # Encoding, then one update per denoising step from the pipeline's step callback.
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    audio, rate = sf.read(result["wav"], dtype="float32", always_2d=True)
    assert (rate, audio.shape) == (SAMPLE_RATE, (round(0.5 * SAMPLE_RATE), 2))
    assert result["mp4"] is None and result["seconds"] == pytest.approx(0.5, abs=1 / SAMPLE_RATE)
    assert result["peak_dbfs"] == pytest.approx(20 * np.log10(np.abs(audio).max()), abs=1e-3)
    assert np.isfinite(result["peak_dbfs"]) and os.path.getsize(result["png"]) > 10_000
    assert result["summary"].startswith("0.50 s, 2 channel(s)")
    # All results of a request live in one new folder under the app's output folder.
    assert {os.path.dirname(result[k]) for k in ("wav", "png")} == {os.path.dirname(result["wav"])}
    assert os.path.dirname(os.path.dirname(result["wav"])) == str(app.output_dir)


def test_generate_video_muxes_the_sound(app, tmp_path):
    video = make_test_video(tmp_path / "clip.mp4", duration=1.2, fps=25, audio=True)
    result = app.generate(video, "", "", 1, 4.5, 0, None)
    channels, rate, seconds = _audio_track(result["mp4"])
    assert (channels, rate) == (2, SAMPLE_RATE) and seconds == pytest.approx(1.2, abs=0.05)
    assert sf.info(result["wav"]).frames == round(1.2 * SAMPLE_RATE)
    assert os.path.basename(result["mp4"]) == "clip_foley.mp4"


def test_bad_input_messages(app, tmp_path):
    with pytest.raises(ValueError, match="Upload a video or write a prompt"):
        app.generate(None, "   ", "", 2, 4.5, 0, 1.0)
    with pytest.raises(ValueError, match=r"Duration must be in \(0, 2\] seconds, got 3"):
        app.generate(None, "rain", "", 2, 4.5, 0, 3.0)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(ValueError, match="The file 'notes.mp4' could not be opened as a video") as error:
        app.generate(str(text), "rain", "", 2, 4.5, 0, None)
    assert str(tmp_path) not in str(error.value)  # the file's name, not where the server keeps it
    long_video = make_test_video(tmp_path / "long.mp4", duration=2.5, fps=10, audio=False)
    with pytest.raises(ValueError, match=r"The video 'long.mp4' is 2.5 s long; this app accepts videos of at most 2 s"):
        app.generate(long_video, "rain", "", 2, 4.5, 0, None)
    with pytest.raises(ValueError, match="Steps must be >= 1"):
        app.generate(None, "rain", "", 0, 4.5, 0, 1.0)
    assert not any(app.output_dir.iterdir())  # nothing written for refused requests


def test_app_command_errors(tmp_path, capsys):
    assert_cli_error(["app", "--model", tmp_path / "missing"], r"cannot load --model .*missing", capsys)
    assert_cli_error(["app", "--model", tmp_path, "--port", "70000"], r"--port must be in \[0, 65535\]", capsys)
    from foley_toolkit.cli import build_parser

    args = build_parser().parse_args(["app", "--model", "m"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)  # this machine only, unless asked


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_text(page, selector: str, text: str, timeout: float) -> str:
    """The inner text of the page once `text` appears in `selector`, or fail with what the page shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = page.locator(selector).all_inner_texts()
        if any(text in item for item in found):
            return "\n".join(found)
        time.sleep(0.2)
    pytest.fail(f"{text!r} not shown within {timeout} s; the page says: {page.inner_text('body')[-800:]!r}")


def test_app_in_a_browser(pipe, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no system Chromium (Debian: apt-get install chromium); .ci/run installs it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")
    assert DEMO_VIDEO.is_file()

    demo = build_app(pipe, output_dir=tmp_path / "results")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    # Screenshots for a human (CI keeps them as artifacts): $FOLEY_APP_SCREENSHOT_DIR, else a new temp folder.
    shots = os.environ.get("FOLEY_APP_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="foley-app-screenshots-")
    os.makedirs(shots, exist_ok=True)
    try:
        assert demo.server_name == "127.0.0.1"
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")

            # Upload the demo video, 2 steps, a prompt; generate.
            page.locator("#input-video input[type=file]").set_input_files(str(DEMO_VIDEO))
            page.locator("#input-video video").wait_for(timeout=20_000)
            page.locator("#steps input[type=number]").fill("2")
            page.locator("#steps input[type=number]").press("Enter")
            page.locator("#prompt textarea").fill("footsteps")
            page.locator("#generate").click()
            page.locator("#result-video video").wait_for(timeout=40_000)
            status = page.locator("#status textarea").input_value()
            assert status.startswith("6.00 s, 2 channel(s) at 44100 Hz"), status
            page.locator("#spectrogram img").wait_for(timeout=10_000)
            page.screenshot(path=os.path.join(shots, "result.png"), full_page=True)

            # The mp4 the page plays (fetched as the browser does) has the demo's length of generated stereo sound.
            source = page.locator("#result-video video").get_attribute("src")
            response = page.request.get(source if source.startswith("http") else f"http://127.0.0.1:{port}{source}")
            assert response.ok, response.status
            served = tmp_path / "served.mp4"
            served.write_bytes(response.body())
            channels, rate, seconds = _audio_track(served)
            assert (channels, rate) == (2, SAMPLE_RATE) and seconds == pytest.approx(6.0, abs=0.05)
            links = [page.locator("#downloads a").nth(i).get_attribute("href") for i in range(2)]
            assert [os.path.basename(link) for link in links] == ["demo_foley.wav", "demo_foley.mp4"], links

            # A text file is refused with a message in the page, not a traceback.
            page.goto(f"http://127.0.0.1:{port}/")
            text = tmp_path / "notes.mp4"
            text.write_text("just some notes, not a video\n")
            page.locator("#input-video input[type=file]").set_input_files(str(text))
            page.locator("#prompt textarea").fill("footsteps")
            page.locator("#generate").click()
            shown = _wait_for_text(page, "body", "could not be opened as a video", timeout=20)
            assert "The file 'notes.mp4' could not be opened as a video" in shown, shown
            assert "Traceback" not in shown and "/tmp/gradio" not in shown  # no stack trace, no server paths
            page.screenshot(path=os.path.join(shots, "error.png"), full_page=True)
            browser.close()
        print(f"screenshots: {shots}")
    finally:
        demo.close()
