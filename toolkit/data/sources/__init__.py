"""Readers of the BAIR sources: processed_data folders and the original TFRecords (no TensorFlow needed)."""
