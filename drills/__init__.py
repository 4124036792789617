"""Fault drills: SIGKILLs, preemption, storage outages, a full or read-only
disk, denied writes, NaN/Inf, another device or process count. A tiny Griffin
(configs/griffin_tiny.py made smaller) trains through `python -m trainer.train`
subprocesses; each drill checks that nothing committed is lost and that the
loss curve equals an uninterrupted run's bit for bit. Prints a markdown table
(docs/reliability.md holds a run of it); tests/test_reliability.py is the CI-
sized version. harness.py runs the trainer processes and compares curves;
one module per kind of fault.

Command, from the repository root (about 15 minutes on a shared 2-core CPU;
the disk drills mount a tmpfs and an ext4 loop file: root; skipped otherwise):
  python -m drills --out=/tmp/griffin_drills
  python -m drills --drills=kill --kills=20

All runs share a persistent XLA cache in --out (a restarted job with a cache
configured compiles once); GCS is the test suite's emulator
(tests/gcs_emulator.py: GcsEmulator), stopped, restarted and made to refuse writes.
"""
