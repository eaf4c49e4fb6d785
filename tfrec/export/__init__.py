"""The export: SavedModel signatures over a top-k index, in TF Serving's folder layout.

- :mod:`tfrec.export.savedmodel`: the served module, the recall gate and ``export_run``;
- :mod:`tfrec.export.catalog_lookup`: item id -> embedding inside the SavedModel, for ranking;
- :mod:`tfrec.export.layout`: version folders, atomic publish, ``models.config``.
"""
