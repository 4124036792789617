"""The XLA flags of every test process: N fake CPU devices, compiled fast.

Tests compile far more than they run, and LLVM's optimisation of the CPU code
costs more than it saves: at level 0 the suite takes about a third less time,
and every number the tests pin comes out the same.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
