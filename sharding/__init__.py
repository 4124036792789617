"""Mesh construction and the one logical-axis rules table."""
