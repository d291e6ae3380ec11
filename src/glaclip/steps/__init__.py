"""Per-image steps around any method: windows, text and its cache, ImageEncoding, post-processing, decision."""
