"""Embedded datasets, generated in the BAIR processed_data layout: the robot-pushing world and moving digits."""
