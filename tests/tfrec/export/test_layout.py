"""tfrec.export.layout: version numbering, atomic publish, TF Serving config files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfrec.export import layout

REPO = Path(__file__).resolve().parents[3]


def _write_marker(text: str):
    def write(d: str) -> None:
        Path(d, "saved_model.pb").write_text(text)
        Path(d, "variables").mkdir()
        Path(d, "variables", "variables.index").write_text("x")
    return write


def test_versions_start_at_one_and_only_increase(tmp_path):
    base = tmp_path / "export" / "m"
    assert layout.latest_version(base) is None
    assert layout.next_version(base) == 1
    assert layout.publish_version(base, _write_marker("a")) == base / "1"
    (base / "7").mkdir()
    (base / "not_a_version").mkdir()
    (base / ".tmp-99-1").mkdir()
    (base / "12").write_text("a file, not a version")
    assert layout.latest_version(base) == 7
    assert layout.next_version(base) == 8
    assert layout.publish_version(base, _write_marker("b")).name == "8"
    assert (base / "8" / "saved_model.pb").read_text() == "b"
    with pytest.raises(ValueError):
        layout.publish_version(base, _write_marker("c"), version=8)
    assert layout.publish_version(base, _write_marker("c"), version=20).name == "20"


def test_failing_write_leaves_no_visible_version(tmp_path):
    base = tmp_path / "m"
    layout.publish_version(base, _write_marker("ok"))

    def broken(d: str) -> None:
        Path(d, "saved_model.pb").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        layout.publish_version(base, broken)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert layout.latest_version(base) == 1
    assert layout.next_version(base) == 2


def test_killed_publish_is_invisible_and_cleaned_up(tmp_path):
    base = tmp_path / "m"
    layout.publish_version(base, _write_marker("v1"))
    # A real process that dies (SIGKILL) in the middle of write_fn.
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from tfrec.export import layout
        def write(d):
            Path(d, "saved_model.pb").write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)
        layout.publish_version({str(base)!r}, write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    leftovers = [p.name for p in base.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [f".tmp-2-{proc.pid}"]
    assert layout.latest_version(base) == 1  # the half-written version is invisible
    assert layout.next_version(base) == 2

    assert layout.publish_version(base, _write_marker("v2")).name == "2"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_live_publishers_temp_folder_is_kept(tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    other = base / f".tmp-5-{os.getppid()}"  # a live process
    other.mkdir()
    layout.publish_version(base, _write_marker("x"))
    assert other.exists()


def test_models_config_round_trip(tmp_path):
    path = layout.write_models_config(tmp_path / "export", ["tfrec", "tfrec_scann"])
    text = path.read_text()
    assert 'model_platform: "tensorflow"' in text and "model_config_list" in text
    assert layout.read_models_config(path) == {
        "tfrec": str((tmp_path / "export" / "tfrec").absolute()),
        "tfrec_scann": str((tmp_path / "export" / "tfrec_scann").absolute()),
    }
    with pytest.raises(ValueError):
        layout.write_models_config(tmp_path, ["../evil"])
    (tmp_path / "bad.config").write_text("model_config_list { nonsense: 1 }")
    with pytest.raises(ValueError):
        layout.read_models_config(tmp_path / "bad.config")


def test_batching_parameters_round_trip(tmp_path):
    path = layout.write_batching_parameters(tmp_path, max_batch_size=32, batch_timeout_micros=500)
    assert "max_batch_size { value: 32 }" in path.read_text()
    params = layout.read_batching_parameters(path)
    assert params["max_batch_size"] == 32
    assert params["batch_timeout_micros"] == 500
    assert params["pad_variable_length_inputs"] is True
