"""What the client prints beside the results, from the export itself: item texts (``--items``, TSV
``item_id<TAB>text``, or the newest version's ``assets.extra/items.tsv``) and the export's report
(``assets.extra/export_report.json``: whether ``retrieve`` leaves the request's history out)."""

from __future__ import annotations

import json
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
    return _newest_extra(model_base_path, job_dir, model_name, "items.tsv")


def read_export_report(model_base_path: str | None, job_dir: str | None, model_name: str) -> dict:
    """The newest version's ``assets.extra/export_report.json`` ({} when there is none)."""
    path = _newest_extra(model_base_path, job_dir, model_name, "export_report.json")
    return json.loads(path.read_text(encoding="utf-8")) if path else {}


def history_note(report: dict) -> str:
    """What the export does with a request's ``history_item_ids`` (its ``export.exclude_history``); "" unknown."""
    if "exclude_history" not in report:
        return ""
    if report["exclude_history"]:
        return "left out of the results: export.exclude_history"
    return "may be returned: export.exclude_history is off"


def _newest_extra(model_base_path: str | None, job_dir: str | None, model_name: str, name: str) -> Path | None:
    base = Path(model_base_path) if model_base_path else (
        Path(job_dir) / "export" / model_name if job_dir else None)
    if base is None or (version := layout.latest_version(base)) is None:
        return None
    path = base / str(version) / "assets.extra" / name
    return path if path.is_file() else None
