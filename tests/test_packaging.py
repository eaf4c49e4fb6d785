"""setup.py: ranges of what tfrec imports at run time, Python 3.10-3.13, test tools only in the [test] extra."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, for the third-party modules the shipped packages import
DISTRIBUTION = {"tensorflow": "tensorflow", "tensorflow_recommenders": "tensorflow-recommenders",
                "scann": "scann", "tensorflow_text": "tensorflow-text", "transformers": "transformers",
                "tensorboard": "tensorboard", "tensorflow_serving": "tensorflow-serving-api", "grpc": "grpcio",
                "google": "protobuf", "numpy": "numpy", "yaml": "PyYAML", "tqdm": "tqdm",
                "hypertune": "cloudml-hypertune", "tf_keras": "tf-keras"}


def _setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setup(), read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    scope: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            scope[node.targets[0].id] = ast.literal_eval(node.value)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {kw.arg: (scope[kw.value.id] if isinstance(kw.value, ast.Name) else kw.value) for kw in call.keywords}


def _third_party_imports() -> set[str]:
    names = set()
    for package in ("tfrec", "trainer", "serving"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("tfrec", "trainer", "serving")}


def test_install_requires_are_ranges_of_the_runtime_imports():
    kwargs = _setup_kwargs()
    requires = [Requirement(r) for r in kwargs["install_requires"]]
    names = {r.name.lower() for r in requires}
    missing = {m for m in _third_party_imports() if DISTRIBUTION.get(m, m).lower() not in names}
    assert not missing, f"imported at run time but not in install_requires: {missing}"
    assert all(str(r.specifier) and "==" not in str(r.specifier) for r in requires)  # ranges, not pins
    assert not names & {"pytest", "nbclient", "ipykernel"}
    assert [Requirement(r).name for r in ast.literal_eval(kwargs["extras_require"])["test"]] == ["pytest"]


def test_the_pinned_tested_set_is_inside_the_ranges():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line.strip())
        if match:
            pins[Requirement(match.group(1)).name.lower()] = match.group(2)
    for req in map(Requirement, _setup_kwargs()["install_requires"]):
        assert req.name.lower() in pins, f"{req.name} is not pinned in requirements.txt"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (req, pins[req.name.lower()])
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (req, installed)


def test_python_versions():
    spec = SpecifierSet(ast.literal_eval(_setup_kwargs()["python_requires"]))
    assert all(f"3.{minor}" in spec for minor in (10, 11, 12, 13))
    assert "3.9" not in spec and "3.14" not in spec
