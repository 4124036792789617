"""The roofline estimate (aot/roofline_fit.py, aot/variants.py,
aot/step_time.py, aot/hlo.py): the fit and its extrapolation against a
directly compiled model, the roofline's arithmetic, the HLO reading of
collectives and loops, and bad input. No timing asserted."""

import dataclasses
import types

import numpy as np
import pytest

from aot import hlo, kernel_cost, roofline_fit, step_time, variants
from model import splash_attention
from sharding import topologies
from trainer import config as config_lib


def _tiny(remat="none", **mesh):
  cd = config_lib.defaults()
  cd.model.update(dict(vocab_size=128, width=64, lru_width=64, head_dim=32, gate_blocks=2,
                       attention_window=8, depth=6, scan_impl="auto", remat=remat))
  cd.data.seq_len = 16
  cd.data.global_batch_size = 2
  for name, value in mesh.items():
    cd.mesh[name] = value
  return config_lib.build(cd)


def test_fit_recovers_the_coefficients_and_extrapolates():
  E, o, B = 5.0, 2.0, 30.0
  measured = {(k, n): {f: E + k * n * o + k * B for f in roofline_fit.COUNTED}
              for k, n in roofline_fit.VARIANTS}
  fitted = roofline_fit.fit(measured)
  for figure in roofline_fit.COUNTED:
    assert fitted[figure] == pytest.approx((E, o, B))
  assert roofline_fit.extrapolate(fitted["flops"], 10) == pytest.approx((E + 10 * o, 10 * B))
  with pytest.raises(ValueError, match="do not determine"):
    roofline_fit.fit({(1, 2): measured[1, 2], (1, 3): measured[1, 3], (1, 4): measured[1, 2]})


def test_per_step_figures_follow_the_line_through_the_one_period_variants():
  measured = {(1, 2): {"x": 7.0}, (1, 3): {"x": 10.0}, (2, 2): {"x": 99.0}}
  assert roofline_fit.per_step_line(measured, "x", 10) == pytest.approx(31.0)


def test_roofline_takes_the_larger_of_compute_and_memory_in_each_part():
  tpu = topologies.get("v5e-8")
  hbm, peak = tpu.generation.hbm_bandwidth, tpu.generation.peak_bf16_flops
  # Outside the loops: memory-bound (1 s of bytes, 0.1 s of FLOPs), 0.5 s of
  # collectives; inside: compute-bound (2 s of FLOPs, 1 s of bytes), 3 s of
  # collectives.
  parts = {"flops": (0.1 * peak, 2 * peak), "bytes": (hbm, hbm),
           "comm_seconds": (0.5, 3.0), "xla_seconds": (0.0, 0.0)}
  times = step_time.roofline(parts, tpu)
  assert times["compute_s"] == pytest.approx(2.1)
  assert times["memory_s"] == pytest.approx(2.0)
  assert times["comm_s"] == pytest.approx(3.5)
  assert times["overlapped_s"] == pytest.approx(1.0 + 3.0)  # max per part
  assert times["serial_s"] == pytest.approx((1.0 + 0.5) + (2.0 + 3.0))
  # In aggregate the maximum would hide the memory-bound part: the per-part
  # sum is never below it.
  assert times["overlapped_s"] >= max(times["compute_s"], times["memory_s"], times["comm_s"])


def test_collective_traffic_per_chip():
  S = 1000
  traffic = {kind: hlo.Collective(kind, S, (0, 1, 2, 3), 1, False, "%c").traffic_bytes
             for kind in hlo.KINDS}
  assert traffic == {"all-gather": 750, "reduce-scatter": 750, "all-reduce": 1500,
                     "all-to-all": 750, "collective-permute": 1000}
  assert hlo.Collective("all-reduce", S, (3,), 1, False, "%c").traffic_bytes == 0


@pytest.mark.parametrize("groups, expected", [
    ("replica_groups={{0,1,2,3},{4,5,6,7}}", (0, 1, 2, 3)),
    ("replica_groups=[2,4]<=[8]", (0, 1, 2, 3)),
    ("replica_groups=[4,2]<=[2,4]T(1,0)", (0, 4)),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", (0, 4)),
    # device_ids lists the mesh's devices: iota(8) as [2,4], transposed.
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}",
     (0, 1, 2, 3)),
    ("replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0','axis_1'}", tuple(range(8))),
    ("replica_groups={}", tuple(range(8))),
    ("source_target_pairs={{0,1},{1,2}}", (0, 1)),
])
def test_replica_group_spellings(groups, expected):
  line = f"  %ag = f32[8]{{0}} all-gather(%p), channel_id=1, {groups}, dimensions={{0}}"
  assert hlo.first_group(line, 8) == expected


MODULE = """\
HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %c = s32[] constant(5)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%fused (x: f32[2]) -> f32[8] {
  %x = f32[2]{0} parameter(0)
  ROOT %ag = f32[8]{0} all-gather(%x), channel_id=7, replica_groups=[2,4]<=[8], dimensions={0}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %x = f32[2]{0} slice(%p)
  %start = f32[8]{0} fusion(%x), kind=kCustom, calls=%fused
  %again = f32[8]{0} fusion(%x), kind=kOutput, calls=%fused.1
  %splash_mqa_dq_segmented_no_residuals.3 = (f32[2,512,128]{2,1,0:T(8,128)}, bf16[2,8,2048,128]{3,2,1,0:T(8,128)(2,1)}) custom-call(%x), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,4,3]{2,1,0}, bf16[2,8,2048,128]{3,2,1,0}, bf16[2,2048,128]{2,1,0}}, frontend_attributes={kernel_metadata={}}
  ROOT %t = (s32[], f32[8]{0}) tuple(%p)
}

%fused.1 (x: f32[2]) -> f32[8] {
  %x = f32[2]{0} parameter(0)
  ROOT %ag2 = f32[8]{0} all-gather(%x), channel_id=7, replica_groups=[2,4]<=[8], dimensions={0}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %ar = f32[8]{0} all-reduce(%a), channel_id=1, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
}
"""


def test_collectives_are_counted_once_per_run_of_their_loop():
  found = sorted(hlo.collectives(MODULE, 8), key=lambda c: c.kind)
  # The all-gather appears in two fusions under one channel: one transfer,
  # run 5 times by the loop.
  assert [(c.kind, c.full_bytes, c.group, c.runs, c.in_loop) for c in found] == [
      ("all-gather", 32, (0, 1, 2, 3), 5, True),
      ("all-reduce", 32, (0, 1), 1, False)]
  assert hlo.while_loops(MODULE) == [("%body", 5)]


GATHER_BY_SUM = """\
HloModule g

%add (x: bf16[], y: bf16[]) -> bf16[] {
  %x = bf16[] parameter(0)
  %y = bf16[] parameter(1)
  ROOT %s = bf16[] add(%x, %y)
}

%dus_fusion (p0: bf16[64,16], p1: bf16[8,16], p2: u32[]) -> bf16[64,16] {
  %p0 = bf16[64,16]{1,0} parameter(0)
  %p1 = bf16[8,16]{1,0} parameter(1)
  %p2 = u32[] parameter(2)
  %z = u32[] constant(0)
  ROOT %d = bf16[64,16]{1,0} dynamic-update-slice(%p0, %p1, %p2, %z)
}

%ds_fusion (q0: bf16[64,16], q1: u32[]) -> bf16[8,16] {
  %q0 = bf16[64,16]{1,0} parameter(0)
  %q1 = u32[] parameter(1)
  %z2 = u32[] constant(0)
  ROOT %s2 = bf16[8,16]{1,0} dynamic-slice(%q0, %q1, %z2), dynamic_slice_sizes={8,16}
}

ENTRY %main (w: bf16[8,16], g: bf16[64,16]) -> bf16[64,16] {
  %w = bf16[8,16]{1,0} parameter(0)
  %g = bf16[64,16]{1,0} parameter(1)
  %i = u32[] constant(8)
  %zero = bf16[] constant(0)
  %zeros = bf16[64,16]{1,0} broadcast(%zero), dimensions={}
  %placed = bf16[64,16]{1,0} dynamic-update-slice(%zeros, %w, %i, %i)
  %gathered = bf16[64,16]{1,0} all-reduce(%placed), channel_id=1, replica_groups=[1,8]<=[8], to_apply=%add
  %fused = bf16[64,16]{1,0} fusion(%zeros, %w, %i), kind=kLoop, calls=%dus_fusion
  %gathered2 = bf16[64,16]{1,0} all-reduce(%fused), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
  %summed = bf16[64,16]{1,0} all-reduce(%g), channel_id=3, replica_groups=[1,8]<=[8], to_apply=%add
  %scattered = bf16[64,16]{1,0} all-reduce(%g), channel_id=4, replica_groups=[1,8]<=[8], to_apply=%add
  %mine = bf16[8,16]{1,0} fusion(%scattered, %i), kind=kLoop, calls=%ds_fusion
  ROOT %r = bf16[64,16]{1,0} add(%gathered, %summed)
}
"""


def test_all_reduces_that_gather_or_scatter_are_counted_as_what_they_do():
  """libtpu spells a gather over a whole v5p torus as the sum of zero buffers
  each holding one device's shard (plainly or inside a fusion), and a
  reduce-scatter as an all-reduce of which each device keeps its eighth; an
  all-reduce whose whole result is used stays one."""
  found = sorted((c.kind, c.full_bytes) for c in hlo.collectives(GATHER_BY_SUM, 8))
  assert found == [("all-gather", 2048), ("all-gather", 2048), ("all-reduce", 2048),
                   ("reduce-scatter", 2048)]


def test_mosaic_kernels_are_found_with_their_runs_and_priced():
  [call] = hlo.kernel_calls(MODULE)
  assert call == hlo.KernelCall(
      "splash_mqa_dq_segmented_no_residuals",
      (("s8", (1, 4, 3)), ("bf16", (2, 8, 2048, 128)), ("bf16", (2, 2048, 128))), 5, True)
  # 2 rows x 8 heads x 9 block pairs (window 1024, blocks of 512), 3 matmuls
  # each; streamed: a key and a value block per pair.
  flops, streamed = kernel_cost.kernel_cost(call, attention_window=1024)
  assert flops == 16 * 9 * 3 * 2 * 512 * 512 * 128
  assert streamed == 16 * 9 * 2 * 512 * 128 * 2


@pytest.mark.parametrize("T, window, block", [(2048, 1024, 512), (2048, None, 512),
                                              (256, 32, 128), (640, 150, 128), (128, 48, 512)])
def test_visited_blocks_are_those_the_dense_mask_touches(T, window, block):
  t, s = np.arange(T)[:, None], np.arange(T)[None, :]
  mask = (t >= s) & ((t - s <= window) if window is not None else True)
  b = min(block, T)
  touched = mask.reshape(T // b, b, T // b, b).any(axis=(1, 3)).sum()
  assert splash_attention.visited_blocks(T, window, block) == touched


def test_a_peeled_loop_counts_from_its_counters_start():
  """libtpu peels the first iteration of a multi-slice step's backward scan
  out of the loop (to pipeline the gradients' DCN all-reduce): the counter
  then starts at 1, through a copy, and the loop runs one trip less."""
  peeled = MODULE.replace(
      "  %w = (s32[], f32[8]{0}) while(%t0)",
      "  %one = s32[] constant(1)\n  %start = s32[] copy(%one)\n"
      "  %t0 = (s32[], f32[8]{0}) tuple(%start, %a)\n  %w = (s32[], f32[8]{0}) while(%t0)")
  assert hlo.while_loops(MODULE) == [("%body", 5)]
  assert hlo.while_loops(peeled) == [("%body", 4)]
  assert [c.runs for c in hlo.collectives(peeled, 8) if c.in_loop] == [4]


def test_a_dcn_all_reduce_is_a_megascale_host_transfer_priced_at_dcn_bandwidth():
  """Across slices libtpu all-reduces with `send`s to the megascale runtime:
  one all-reduce per send, over one chip of each slice, at DCN speed."""
  dcn = MODULE.replace("  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1", (
      "  %s = (f32[1024]{0}, u32[], token[]) send(%a, %tok), channel_id=9, is_host_transfer="
      "true, frontend_attributes={_xla_megascale_reduce_operation=\"SUM\",_xla_megascale_"
      "transfer_type=\"ALL_REDUCE\"}\n  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1"))
  found = [c for c in hlo.collectives(dcn, 8, num_slices=2) if c.group == (0, 4)]
  assert [(c.kind, c.full_bytes, c.runs, c.in_loop) for c in found] == [
      ("all-reduce", 4096, 1, False)]
  chip = topologies.get("v5p-8").generation
  devices = [types.SimpleNamespace(slice_index=i // 4, coords=(i % 4, 0, 0)) for i in range(8)]
  assert step_time.group_seconds(found[0], devices, chip) == 4096 / chip.dcn


def test_a_loop_that_is_not_counter_below_constant_is_an_error():
  odd = MODULE.replace("direction=LT", "direction=NE")
  with pytest.raises(ValueError, match="trip count"):
    hlo.while_loops(odd)


def test_only_the_two_layer_scans_may_loop():
  tpu = topologies.get("v5e-8")
  with pytest.raises(ValueError, match="scan_impl=auto"):
    variants.measure(MODULE, {"flops": 1.0, "bytes accessed": 1.0}, [], tpu, groups=5)


def test_bandwidth_of_a_group_counts_the_torus_axes_it_spans():
  devices = list(topologies.get("v5e-8").get_topology_desc().devices)  # 2 x 4 chips
  v5e = topologies.GENERATIONS["v5e"]
  link = v5e.ici_link
  by_coords = {tuple(d.coords[:2]): i for i, d in enumerate(devices)}
  line = [by_coords[0, y] for y in range(4)]  # one axis
  plane = list(range(8))  # both axes
  one = step_time.group_seconds(hlo.Collective("all-gather", 800, tuple(line), 1, True, "%c"),
                                devices, v5e)
  two = step_time.group_seconds(hlo.Collective("all-gather", 800, tuple(plane), 1, True, "%c"),
                                devices, v5e)
  assert one == pytest.approx(800 * 3 / 4 / (2 * link))
  assert two == pytest.approx(800 * 7 / 8 / (4 * link))
  # Two slices: a group with a chip of each goes over the data-centre network.
  slices = list(topologies.get("v5e-4").get_topology_desc(2).devices)
  crossing = hlo.Collective("all-reduce", 800, (0, 4), 1, False, "%c")
  assert step_time.group_seconds(crossing, slices, v5e) == pytest.approx(800 / v5e.dcn)
  with pytest.raises(ValueError, match="v5e has no DCN bandwidth"):
    step_time.group_seconds(crossing, slices, dataclasses.replace(v5e, dcn=None))


def test_bad_input_fails_before_compiling():
  with pytest.raises(ValueError, match="unknown TPU accelerator type 'v5p-100'"):
    roofline_fit.estimate(_tiny(), "v5p-100")


def _scanned_step(tpu, copies, groups, unrolled=False):
  """A train step shaped like the model's: `groups` scanned groups of
  `copies` tanh(x W) layers, gradients (two loops: forward and backward), an
  update. Compiles in about a second for one v5e chip."""
  import jax
  import jax.numpy as jnp
  device = tpu.get_topology_desc().devices[0]
  D, B = 128, 256

  def loss(ws_NKDD, x_BD):
    def group(x_BD, w_KDD):
      for i in range(copies):
        x_BD = jnp.tanh(x_BD @ w_KDD[i])
      return x_BD, None
    if unrolled:
      for n in range(groups):
        x_BD, _ = group(x_BD, ws_NKDD[n])
    else:
      x_BD, _ = jax.lax.scan(group, x_BD, ws_NKDD)
    return jnp.sum(x_BD**2)

  def step(ws_NKDD, x_BD):
    grads = jax.grad(loss, argnums=(0, 1))(ws_NKDD, x_BD)
    return ws_NKDD - 0.1 * grads[0], x_BD - 0.1 * grads[1]

  sharding = jax.sharding.SingleDeviceSharding(device)
  args = (jax.ShapeDtypeStruct((groups, copies, D, D), jnp.float32, sharding=sharding),
          jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=sharding))
  return topologies.compile_only(jax.jit(step).lower(*args)), [device]


def test_extrapolation_reproduces_a_directly_compiled_program():
  """The fit from three shallow scanned compiles, counted as cost_analysis
  counts them (loop bodies once), predicts the FLOPs of the same 4 layers
  compiled unrolled, where cost_analysis sees every layer."""
  tpu = topologies.get("v5e-1")
  measured = {}
  for k, n in roofline_fit.VARIANTS:
    compiled, devices = _scanned_step(tpu, k, n)
    measured[k, n] = variants.measure(compiled.as_text(), compiled.cost_analysis(),
                                      devices, tpu, groups=n)
  outside, inside = roofline_fit.extrapolate(roofline_fit.fit(measured)["flops"], 4)
  unrolled, _ = _scanned_step(tpu, 1, 4, unrolled=True)
  assert outside + inside == pytest.approx(unrolled.cost_analysis()["flops"], rel=0.01)
  # cost_analysis really counts a loop body once: 3 groups cost what 2 do,
  # up to the update of the extra group's weights.
  assert measured[1, 3]["flops"] == pytest.approx(measured[1, 2]["flops"], rel=0.01)


def test_estimate_turns_figures_into_step_time_and_mfu():
  config = dataclasses.replace(_tiny(), model=dataclasses.replace(_tiny().model, depth=12))
  tpu = topologies.get("v5e-1")
  peak, hbm = tpu.generation.peak_bf16_flops, tpu.generation.hbm_bandwidth
  E, o, B = 1.0, 0.5, 2.0  # seconds of compute; bytes worth half as long
  K = 0.25  # seconds of a kernel XLA does not price, per group and step

  def fake_measure(config, accelerator_type, num_slices, copies, groups):
    counted = E + copies * groups * o + copies * B
    figures = {figure: 0.0 for figure in roofline_fit.PER_STEP}
    figures["kernel_flops_loop"] = groups * K * peak  # trip counts applied
    return dict(flops=counted * peak, bytes=counted * hbm / 2, xla_seconds=counted,
                **figures)

  row = roofline_fit.estimate(config, "v5e-1", measure_fn=fake_measure)
  counted = E + 4 * (o + B)  # 4 pattern periods, compute-bound, nothing to send
  step = counted + 4 * K
  assert row["periods"] == 4
  assert row["overlapped_s"] == pytest.approx(step) and row["serial_s"] == pytest.approx(step)
  assert row["memory_s"] == pytest.approx(counted / 2) and row["xla_s"] == pytest.approx(counted)
  assert row["hardware_flops"] == pytest.approx(step * peak)
  assert row["mfu"] == pytest.approx(row["model_flops"] / (peak * step))
