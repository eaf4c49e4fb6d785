"""The public API surface (tfrec/__init__.py, tfrec/api.py) and the trainer's --print-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_import_is_cheap_and_dir_shows_the_api_only():
    proc = python("import sys, tfrec; print(sorted(dir(tfrec))); print('tensorflow' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    names, tf_loaded = proc.stdout.strip().splitlines()
    assert eval(names) == ["Run", "__version__", "build_model", "evaluate_model", "export_model", "fit",
                           "load_config", "load_export", "load_trained"]
    assert tf_loaded == "False"  # the API's modules load on first use


def test_unknown_attribute_is_an_attribute_error():
    import tfrec

    with pytest.raises(AttributeError, match="no attribute 'trainer'"):
        tfrec.trainer  # noqa: B018


def test_load_config_order_is_the_clis(tmp_path):
    import tfrec

    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 5\n  batch_size: 16\n")
    cfg = tfrec.load_config(user, preset="smoke", overrides=["train.epochs=7"])
    assert cfg.name == "smoke" and cfg.model.embedding_dim == 16  # the preset over the defaults (64)
    assert cfg.train.batch_size == 16  # the YAML over the preset (32)
    assert cfg.train.epochs == 7  # the override over the YAML (5)
    from tfrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        tfrec.load_config(preset="smoke", overrides=["train.epochs=0"])


def test_print_config_prints_the_resolved_yaml_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--preset", "smoke", "--set", "train.epochs=3",
                           "--print-config", "--job-dir", str(tmp_path / "never")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["name"] == "smoke" and printed["train"]["epochs"] == 3
    assert printed["model"]["query_encoder"]["checkpoint"] == "random://tiny"
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written


def test_load_trained_names_what_is_missing(tmp_path):
    import tfrec
    from tfrec import config as config_lib
    from tfrec.errors import UserError

    with pytest.raises(UserError, match=r"no params.yaml; not a tfrec job dir"):
        tfrec.load_trained(tmp_path)
    (tmp_path / "params.yaml").write_text(config_lib.to_yaml(config_lib.build("smoke")))
    with pytest.raises(UserError, match=r"no trained weights at .*checkpoints/best/weights.index"):
        tfrec.load_trained(tmp_path)
