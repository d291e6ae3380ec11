"""Many inputs (or methods) to outputs: collections, batch segment, eval, metrics, data sets, masks, compare, bench."""
