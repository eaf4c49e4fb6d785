import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code: str, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environ)


def test_import_sets_legacy_keras_before_tensorflow():
    proc = run("import trainer, os, tensorflow as tf; print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "tf_keras.api._v2.keras"]


def test_tensorflow_imported_first_with_keras3_is_a_clear_error():
    proc = run("import tensorflow\nimport serving")
    assert proc.returncode != 0
    assert "ImportError: tfrec needs Keras 2 (tf-keras), but tensorflow was imported before tfrec" in proc.stderr
