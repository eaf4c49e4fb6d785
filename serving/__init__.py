"""tfrec serving: SavedModel export layout, a TF Serving-compatible server, and clients."""
import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
