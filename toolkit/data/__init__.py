"""Data layer: the embedded generators, source readers (BAIR folders, TFRecords), shards and the loader."""
