"""models.config: relative to its folder (the export moves as a whole), or under a --base_path for the container."""

import shutil

from tfrec.export import layout


def _export(root):
    for name in ("shop", "shop_scann"):
        (root / name / "1").mkdir(parents=True)
    (root / "notes").mkdir()  # a folder without versions is not listed
    return root


def test_default_entries_are_relative_and_survive_a_move(tmp_path):
    root = _export(tmp_path / "export")
    assert layout.model_names(root) == ["shop", "shop_scann"]
    path = layout.write_models_config(root, layout.model_names(root))
    text = path.read_text()
    assert 'base_path: "shop"' in text and str(tmp_path) not in text  # no training-machine path inside
    moved = tmp_path / "elsewhere"
    shutil.move(str(root), str(moved))
    assert layout.read_models_config(moved / "models.config") == {"shop": str(moved / "shop"),
                                                                  "shop_scann": str(moved / "shop_scann")}


def test_base_path_prefix_for_the_serving_container(tmp_path, capsys):
    root = _export(tmp_path / "export")
    assert layout.main([str(root), "--base_path", "/models/"]) == 0
    assert "shop, shop_scann under /models/" in capsys.readouterr().out
    text = (root / "models.config").read_text()
    assert 'base_path: "/models/shop"' in text and 'base_path: "/models/shop_scann"' in text
    assert layout.read_models_config(root / "models.config")["shop"] == "/models/shop"
    out = tmp_path / "docker.config"
    assert layout.main([str(root), "--base_path", "/m", "--output", str(out)]) == 0
    assert 'base_path: "/m/shop"' in out.read_text()
    assert layout.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_build_md_container_line_runs(tmp_path):
    """BUILD.md's `python -m tfrec.export.layout ...` line, run on an export folder standing in for the demo's."""
    import shlex
    from pathlib import Path

    build = (Path(__file__).resolve().parents[3] / "BUILD.md").read_text()
    line = next(ln for ln in build.splitlines() if " -m tfrec.export.layout " in ln)
    args = shlex.split(line.replace("runs/movielens/export", str(_export(tmp_path / "export"))))
    assert args[:3] == [".venv/bin/python", "-m", "tfrec.export.layout"]
    assert layout.main(args[3:]) == 0
    mounted = (tmp_path / "export" / "models.docker.config").read_text()
    assert 'base_path: "/models/shop"' in mounted
    assert "--model_config_file=/models/models.docker.config" in build  # the docker line reads that file
