"""Packaging for foley_toolkit (distribution name ``foley-toolkit``).

Install torch first, pinned (``pip install torch==2.13.0``): a bare ``torch`` requirement in a fresh
environment pulls a multi-GB CUDA build. The range below is satisfied by that wheel.
"""

from setuptools import find_packages, setup

setup(
    name="foley-toolkit",
    version="0.1.0",
    description="Kling-Foley video-to-audio generation as diffusers-compatible models, pipelines and training scripts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "diffusers>=0.42,<0.43",
        "transformers>=4.50",
        "peft>=0.17",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=0.30",
        "datasets>=3.0",
        "av>=12.0",
        "soundfile>=0.12",
        "numpy>=1.26",
        "scipy>=1.11",
        "tqdm>=4.66",
        "sentencepiece>=0.2",
        "pyloudnorm>=0.1.1",
    ],
    # Converter equivalence tests (tests/test_conversion.py) also use the original implementations as references:
    # `pip install --no-deps bigvgan==2.4.1 open-clip-torch==3.3.0` (source only, MIT; the tests skip without them).
    # --no-deps because their declared dependencies pull torchvision, whose Linux PyPI wheel needs CUDA torch and
    # breaks a CPU torch, and bigvgan's training tools (auraloss, nnaudio, ninja); what the tests import from them
    # needs only numpy, scipy, librosa, matplotlib and huggingface_hub. The converters themselves need nothing extra.
    # eval: wideband PESQ (compiled from C) and librosa's Griffin-Lim (`eval-codec --griffin-lim`); only evaluation
    # needs them. train: tensorboard for `--report_to tensorboard` (accelerate only warns when it is missing);
    # wandb is optional (`pip install foley-toolkit[wandb]`). plot: matplotlib for `generate --plot`; app: the Gradio
    # web app (`foley-toolkit app`), which also draws the spectrogram. The test extra adds playwright for the app's
    # browser test, which drives a system Chromium (Debian's `chromium` package; no browser download).
    extras_require={
        "eval": ["librosa>=0.10", "pesq>=0.0.4", "torchlibrosa>=0.1", "torchvggish>=0.2"],  # PANNs / VGGish front ends
        # PaSST (FD_PaSST / KL_PaSST): hear21passt imports timm, which needs a torchvision built for the installed torch
        # (pip may otherwise replace torch), so it is its own extra, installed where that pair is in place.
        "passt": ["hear21passt>=0.0.26"],
        "train": ["tensorboard>=2.14"],
        "wandb": ["wandb>=0.17"],
        "plot": ["matplotlib>=3.5"],
        "app": ["gradio>=6.0", "matplotlib>=3.5"],
        "test": [
            "pytest>=8",
            "librosa>=0.10",
            "pesq>=0.0.4",
            "tensorboard>=2.14",
            "matplotlib>=3.5",
            "torchlibrosa>=0.1",
            "panns-inference>=0.1.1",
            "torchvggish>=0.2",
            "gradio>=6.0",
            "playwright>=1.40",
        ],
    },
    entry_points={"console_scripts": ["foley-toolkit=foley_toolkit.cli:main"]},
)
