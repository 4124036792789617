"""Mesh construction, the one logical-axis rules table, and the one table of
hardware facts (TPU generations and accelerator types: `topologies.py`)."""
