"""Item texts for the client's printout: ``--items`` (TSV ``item_id<TAB>text``) or the export's own
``assets.extra/items.tsv`` of the newest version."""

from __future__ import annotations

from pathlib import Path

from tfrec.export import layout


def read_items(path: str | Path) -> dict[str, str]:
    """``item_id<TAB>text`` lines (an ``item_id`` header line is skipped) -> {id: text}."""
    items = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        item_id, _, text = line.partition("\t")
        if item_id and item_id != "item_id":
            items[item_id] = text
    return items


def find_items_file(model_base_path: str | None, job_dir: str | None, model_name: str
                    ) -> Path | None:
    """The newest version's ``assets.extra/items.tsv``, if there is one."""
    base = Path(model_base_path) if model_base_path else (
        Path(job_dir) / "export" / model_name if job_dir else None)
    if base is None or (version := layout.latest_version(base)) is None:
        return None
    path = base / str(version) / "assets.extra" / "items.tsv"
    return path if path.is_file() else None
