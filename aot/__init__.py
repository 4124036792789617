"""Compile-only analysis for TPU topologies on any host: does a step fit, and how fast could it run."""
