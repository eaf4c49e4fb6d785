"""Data: readers for csv/tsv/jsonl/TFRecord/RecBole files, splits, bundled data sets."""
