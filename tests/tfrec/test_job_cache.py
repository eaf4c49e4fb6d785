import numpy as np

from tfrec.job_cache import JobCache, digest


def test_encodings_are_reused_for_the_same_encoder_and_texts_only(tmp_path, caplog):
    calls = []

    def encode(texts, progress=None):
        calls.append(list(texts))
        return np.arange(len(texts) * 2, dtype=np.float32).reshape(len(texts), 2)

    first = JobCache(tmp_path).encoder("query", encode, {"checkpoint": "random://tiny", "seed": 1})
    out = first(["a", "b"], progress="encoding")
    again = JobCache(tmp_path).encoder("query", encode, {"checkpoint": "random://tiny", "seed": 1})
    with caplog.at_level("INFO", logger="tfrec"):
        np.testing.assert_array_equal(again(["a", "b"]), out)
    assert calls == [["a", "b"], ["a"]]  # the rerun calls the encoder on one text only (to build its weights)
    assert "cache: reused 2 query encodings" in caplog.text
    calls.clear()
    JobCache(tmp_path).encoder("query", encode, {"checkpoint": "random://tiny", "seed": 2})(["a", "b"])
    JobCache(tmp_path).encoder("query", encode, {"checkpoint": "random://tiny", "seed": 1})(["a", "c"])
    assert calls == [["a", "b"], ["a", "c"]]  # another seed, other texts: encoded afresh
    assert not list((tmp_path / "cache" / "encodings").glob(".*"))  # no temporary file left
    JobCache(tmp_path, enabled=False).encoder("query", encode, {"checkpoint": "random://tiny", "seed": 1})(["a", "b"])
    assert len(calls) == 3


def test_baseline_results_are_kept_and_reused_by_identity(tmp_path):
    runs = []
    compute = lambda: runs.append(1) or {"recall@10": 0.5}  # noqa: E731
    assert JobCache(tmp_path).baseline("popularity", {"ks": [10]}, compute) == ({"recall@10": 0.5}, False)
    assert JobCache(tmp_path).baseline("popularity", {"ks": [10]}, compute) == ({"recall@10": 0.5}, True)
    assert JobCache(tmp_path).baseline("popularity", {"ks": [5]}, compute)[1] is False
    assert len(runs) == 2


def test_digest_tells_text_lists_apart():
    assert digest({}, ["ab", "c"]) != digest({}, ["a", "bc"]) != digest({}, ["a", "b", "c"])
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


def test_encode_keeps_outputs_only_in_the_cache_it_is_given(tmp_path):
    from tfrec import job_cache

    class Encoder:
        def encode_texts(self, texts, progress=None):
            return np.ones([len(texts), 3], np.float32)

        def get_config(self):
            return {"checkpoint": "random://tiny"}

    encoder = Encoder()
    assert job_cache.encode(None, "query", encoder) == encoder.encode_texts  # no cache: the encoder itself
    job_cache.encode(JobCache(tmp_path / "a"), "query", encoder)(["a"])
    assert [p.parent.parent.parent.name for p in tmp_path.glob("*/cache/encodings/query-*.npy")] == ["a"]
