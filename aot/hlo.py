"""Collectives and loops of a compiled (post-SPMD, scheduled) HLO module's text.

XLA's `cost_analysis()` gives FLOPs and bytes but says nothing about what
crosses the interconnect; this module reads it off `compiled.as_text()`:
every all-gather, reduce-scatter, all-reduce, all-to-all and
collective-permute, the devices of its groups, and how many times it runs
(the trip counts of the while loops around it).

What the TPU compiler prints, and how it is read:
  - A collective can appear in several fused computations under one
    `channel_id` (an async start, the compute fusion it overlaps with, the
    done): it is one transfer, counted once per executing computation.
  - Fused computations run where their fusion instruction runs; while bodies
    run `trip count` times (the loop condition's `constant(N)` compared LT
    with a counter from its start, or `known_trip_count` where XLA prints it).
  - Replica groups come in three spellings: explicit `{{0,1},{2,3}}`, iota
    `[2,4]<=[4,2]T(1,0)`, and mesh `mesh['axis_0'=4,'axis_1'=2],
    device_ids=([2,4]T(1,0)) {'axis_0'}`. Ids index the executable's device
    assignment, which for `jax.jit` over a mesh is `mesh.devices.flat`.

Per-chip traffic of a collective over n chips of a full array of S bytes (a
ring, or any bandwidth-optimal algorithm): all-gather, reduce-scatter and
all-to-all send S (n - 1) / n; all-reduce 2 S (n - 1) / n (reduce-scatter then
all-gather); collective-permute S.
"""

import dataclasses
import math
import re

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "s4": 0.5, "u4": 0.5}
_HEADER = re.compile(r"^(ENTRY )?(%[\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_CALLEES = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)"
                      r"=(%[\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One transfer, as one device of the program runs it."""

  kind: str  # one of KINDS
  full_bytes: int  # S: the whole array the group gathers, reduces or exchanges
  group: tuple[int, ...]  # device ids (assignment indices) of this device's group...
  # ...taken from the first group: SPMD groups are the same shape everywhere.
  runs: int  # times it runs per step (product of the loop trip counts around it)
  in_loop: bool  # inside a while body (a scanned layer group)
  computation: str  # the executing (non-fused) computation

  @property
  def traffic_bytes(self) -> float:
    """Bytes one chip sends per run (= receives) in a bandwidth-optimal schedule."""
    n = len(self.group)
    if self.kind == "collective-permute":
      return float(self.full_bytes)
    if n <= 1:
      return 0.0
    factor = 2 if self.kind == "all-reduce" else 1
    return factor * self.full_bytes * (n - 1) / n


def array_bytes(type_text: str) -> list[int]:
  """Bytes of every array in an HLO type (`f32[2,3]{1,0}` or a tuple of them)."""
  sizes = []
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype not in ITEM_BYTES and not dtype.startswith("f8"):
      continue  # not a dtype (e.g. a layout's tile); none are printed like one
    item = ITEM_BYTES.get(dtype, 1)
    sizes.append(int(math.prod(int(d) for d in dims.split(",") if d) * item))
  return sizes


def split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """({computation name: instruction lines}, entry name)."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      computations[current].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text; pass compiled.as_text()")
  return computations, entry


def trip_count(condition_lines: list[str], while_line: str,
               caller_lines: list[str] = ()) -> int:
  """Iterations of a while loop: XLA's known_trip_count, else the bound of
  the `counter < N` compare in its condition less the counter's start. The
  start is 0 for lax.scan's loops; a loop XLA peeled (its first iteration
  moved out, as libtpu does to the backward scan of a multi-slice step)
  starts at 1, read from the constant its `caller_lines` feed it."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_line)
  if known:
    return int(known.group(1))
  constants = [int(m.group(1)) for line in condition_lines
               for m in [re.search(r"= [su](?:32|64)\[\]\S* constant\((\d+)\)", line)] if m]
  if len(constants) != 1 or not any("direction=LT" in line for line in condition_lines):
    raise ValueError("cannot read the trip count of a while loop: its condition is not "
                     f"`counter < constant` (constants {constants}): {while_line[:200]}")
  return constants[0] - _counter_start(condition_lines, while_line, caller_lines)


def _counter_start(condition_lines: list[str], while_line: str, caller_lines) -> int:
  """The constant the loop's counter starts from (0 where it cannot be traced:
  lax.scan's own loops)."""
  index = next((re.search(r"index=(\d+)", line) for line in condition_lines
                if re.search(r"= [su](?:32|64)\[\]\S* get-tuple-element\(", line)), None)
  init = re.search(r" while\((%[\w.\-]+)\)", while_line)
  if not index or not init:
    return 0
  defined = {m.group(1): m for m in map(_INSTRUCTION.match, caller_lines) if m}
  value = defined.get(init.group(1))
  if value is None or value.group(3) != "tuple":
    return 0
  operand = _operands(value)[int(index.group(1))]
  while operand in defined and defined[operand].group(3) == "copy":
    operand = _operands(defined[operand])[0]
  constant = defined.get(operand)
  if constant is None or constant.group(3) != "constant":
    return 0
  return int(re.match(r"(-?\d+)\)", constant.group(4)).group(1))


def _iota(dims: list[int], perm: list[int] | None) -> np.ndarray:
  ids = np.arange(math.prod(dims)).reshape(dims)
  return (ids.transpose(perm) if perm else ids).reshape(-1)


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def first_group(line: str, num_devices: int) -> tuple[int, ...]:
  """The device ids of the first replica group of a collective's line."""
  pairs = re.search(r"source_target_pairs=\{\{(\d+),(\d+)\}", line)
  if pairs:
    return (int(pairs.group(1)), int(pairs.group(2)))
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]"
                   r"(?:, device_ids=\((\[[\d,]+\](?:T\([\d,]+\))?|[\d,]*)\))? \{([^}]*)\}", line)
  if mesh:
    axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    ids = np.arange(math.prod(sizes))
    if mesh.group(2):
      iota = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", mesh.group(2).strip())
      ids = (_iota(_ints(iota.group(1)), iota.group(2) and _ints(iota.group(2))) if iota
             else np.array(_ints(mesh.group(2))))
    grouped = [names.index(a) for a in re.findall(r"'(\w+)'", mesh.group(3))]
    rest = [i for i in range(len(names)) if i not in grouped]
    ids = ids.reshape(sizes).transpose(rest + grouped)
    return tuple(int(i) for i in ids.reshape(-1, math.prod(sizes[i] for i in grouped))[0])
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if iota:
    shape = _ints(iota.group(1))
    ids = _iota(_ints(iota.group(2)), iota.group(3) and _ints(iota.group(3)))
    return tuple(int(i) for i in ids.reshape(shape[0], -1)[0])
  explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if explicit:
    return tuple(_ints(explicit.group(1)))
  if re.search(r"replica_groups=\{\}", line) or "replica_groups" not in line:
    return tuple(range(num_devices))
  raise ValueError(f"unrecognised replica groups in: {line[:300]}")


def _collective_bytes(kind: str, opcode: str, type_text: str, group_size: int) -> int:
  sizes = array_bytes(type_text)
  if opcode.endswith("-start"):
    # Async starts return (operand(s), output(s), scratch): the largest is the
    # gathered output (all-gather) or the buffer being moved.
    sizes = [max(sizes)]
  total = sum(sizes)
  return total * group_size if kind == "reduce-scatter" else total


def _execution_contexts(computations: dict[str, list[str]],
                        entry: str) -> dict[str, tuple[str, int, bool]]:
  """{computation: (executing computation, runs per step, inside a while
  body)}, walking the call graph from ENTRY."""
  context = {entry: (entry, 1, False)}
  stack = [entry]
  while stack:
    name = stack.pop()
    executing, runs, in_loop = context[name]
    for line in computations[name]:
      instruction = _INSTRUCTION.match(line)
      if not instruction:
        continue
      opcode = instruction.group(3)
      callees = _CALLEES.findall(line)
      branches = _BRANCHES.search(line)
      if branches:
        callees += [("branch", c.strip()) for c in branches.group(1).split(",")]
      for role, callee in callees:
        if callee not in computations or callee in context:
          continue
        if opcode == "while" and role == "body":
          condition = re.search(r"condition=(%[\w.\-]+)", line).group(1)
          trips = trip_count(computations[condition], line, computations[name])
          context[callee] = (callee, runs * trips, True)
        elif opcode == "while" or role == "to_apply" and opcode != "call":
          context[callee] = (callee, runs, in_loop)  # conditions, reducers
        elif opcode in ("call", "conditional"):
          context[callee] = (callee, runs, in_loop)
        else:  # fusions and async wrappers run where they are called
          context[callee] = (executing, runs, in_loop)
        stack.append(callee)
  return context


def _operands(instruction: re.Match) -> list[str]:
  """The names of an instruction's operands, in order."""
  return re.findall(r"(%[\w.\-]+)", instruction.group(4).split(")")[0])


def _fused(instruction: re.Match, computations: dict[str, list[str]]) -> list[re.Match] | None:
  """The instructions of the computation a fusion calls; None for anything
  but a fusion."""
  called = re.search(r"calls=(%[\w.\-]+)", instruction.group(0))
  if instruction.group(3) != "fusion" or not called or called.group(1) not in computations:
    return None
  return [m for m in map(_INSTRUCTION.match, computations[called.group(1)]) if m]


def _parameter(fused: list[re.Match], index: int) -> str | None:
  """The name of parameter `index` inside a fused computation."""
  return next((m.group(1) for m in fused if m.group(3) == "parameter"
               and re.search(rf"parameter\({index}\)", m.group(0))), None)


def _is_gather_by_sum(instruction: re.Match, computations: dict[str, list[str]],
                      defined: dict[str, re.Match]) -> bool:
  """An all-reduce of a zero buffer with this device's shard written in (a
  dynamic-update-slice into a broadcast, plain or as the root of a fusion):
  the TPU compiler's spelling of an all-gather over some groups (libtpu
  0.42 does it for every gather over a whole v5p 4x4x4 torus). Each device
  contributes only its shard: the data of a gather."""
  def is_zeros(source: re.Match | None) -> bool:
    return source is not None and source.group(3) in ("broadcast", "constant")

  source = defined.get(next(iter(_operands(instruction)), ""))
  if source is None:
    return False
  if source.group(3) == "dynamic-update-slice":
    return is_zeros(defined.get(_operands(source)[0]))
  fused = _fused(source, computations)
  root = next((m for m in fused or () if m.group(0).lstrip().startswith("ROOT ")), None)
  if root is None or root.group(3) != "dynamic-update-slice":
    return False
  base = {m.group(1): m for m in fused}.get(_operands(root)[0])
  if is_zeros(base):
    return True
  # The buffer comes in as a parameter of the fusion: zeros outside it.
  operands = _operands(source)
  return any(_parameter(fused, i) == base.group(1) and is_zeros(defined.get(name))
             for i, name in enumerate(operands)) if base is not None else False


def _is_scatter_by_sum(instruction: re.Match, computations: dict[str, list[str]],
                       users: list[re.Match], group_size: int) -> bool:
  """An all-reduce of which each device keeps only its 1/n slice (every user
  dynamic-slices it, plainly or inside a fusion): how libtpu 0.42 compiles a
  reduce-scatter, even an explicit `psum_scatter`; the data of a reduce-scatter."""
  arrays = _ARRAY.findall(instruction.group(2))
  whole = math.prod(_ints(arrays[0][1])) if len(arrays) == 1 else 0

  def slices_a_share(line):  # a dynamic-slice of 1/n of the array
    sizes = re.search(r"dynamic_slice_sizes=\{([\d,]*)\}", line)
    return bool(sizes) and math.prod(_ints(sizes.group(1))) * group_size == whole

  me = instruction.group(1)
  if not users or not whole:
    return False
  for user in users:
    if user.group(3) == "dynamic-slice":
      if _operands(user)[0] != me or not slices_a_share(user.group(0)):
        return False
      continue
    fused = _fused(user, computations)
    if fused is None:
      return False
    for index in (i for i, name in enumerate(_operands(user)) if name == me):
      param = _parameter(fused, index)
      uses = [m for m in fused if param and param in _operands(m)]
      if not uses or any(m.group(3) != "dynamic-slice" or not slices_a_share(m.group(0))
                         for m in uses):
        return False
  return True


def collectives(hlo_text: str, num_devices: int, num_slices: int = 1) -> list[Collective]:
  """Every collective transfer of the module, once per executing computation.
  An all-reduce that only assembles shards (`_is_gather_by_sum`) or of which
  each device keeps its share (`_is_scatter_by_sum`) is counted as the
  all-gather or reduce-scatter it is. Across `num_slices` slices libtpu
  all-reduces over DCN with host transfers (`send` marked as a megascale
  ALL_REDUCE): each is an all-reduce of its buffer over one chip per slice."""
  computations, entry = split_computations(hlo_text)
  context = _execution_contexts(computations, entry)
  found: dict[tuple[str, str], Collective] = {}
  for name, (executing, runs, in_loop) in context.items():
    defined = {m.group(1): m for m in map(_INSTRUCTION.match, computations[name]) if m}
    for line in computations[name]:
      instruction = _INSTRUCTION.match(line)
      if not instruction:
        continue
      opcode = instruction.group(3)
      kind = opcode.removesuffix("-start")
      if opcode == "send" and '_xla_megascale_transfer_type="ALL_REDUCE"' in line:
        per_slice = num_devices // num_slices
        channel = re.search(r"channel_id=(\d+)", line).group(1)
        found[(executing, f"dcn{channel}")] = Collective(
            "all-reduce", array_bytes(instruction.group(2))[0],
            tuple(i * per_slice for i in range(num_slices)), runs, in_loop, executing)
        continue
      if kind not in KINDS or opcode.endswith("-done"):
        continue
      group = first_group(line, num_devices)
      size = _collective_bytes(kind, opcode, instruction.group(2), len(group))
      # The full array either way: its traffic is a gather's or a scatter's.
      if kind == "all-reduce" and _is_gather_by_sum(instruction, computations, defined):
        kind = "all-gather"
      elif kind == "all-reduce" and opcode == "all-reduce":
        me = instruction.group(1)
        users = [m for m in defined.values() if m.group(1) != me and me in _operands(m)]
        if _is_scatter_by_sum(instruction, computations, users, len(group)):
          kind = "reduce-scatter"
      channel = re.search(r"channel_id=(\d+)", line)
      key = (executing, channel.group(1) if channel else instruction.group(1))
      if key not in found or found[key].full_bytes < size:
        found[key] = Collective(kind, size, group, runs, in_loop, executing)
  return list(found.values())


def while_loops(hlo_text: str) -> list[tuple[str, int]]:
  """(body name, trip count) of every while loop in the module."""
  computations, _ = split_computations(hlo_text)
  loops = []
  for lines in computations.values():
    for line in lines:
      instruction = _INSTRUCTION.match(line)
      if instruction and instruction.group(3) == "while":
        body = re.search(r"body=(%[\w.\-]+)", line).group(1)
        condition = re.search(r"condition=(%[\w.\-]+)", line).group(1)
        loops.append((body, trip_count(computations[condition], line, lines)))
  return loops


@dataclasses.dataclass(frozen=True)
class KernelCall:
  """One Mosaic (Pallas TPU) kernel call, as one device of the program runs it."""

  name: str  # the kernel's name without XLA's suffix, e.g. splash_mqa_fwd_segmented_residuals
  operands: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, dims) of each operand
  runs: int  # times it runs per step (product of the loop trip counts around it)
  in_loop: bool  # inside a while body (a scanned layer group)


def kernel_calls(hlo_text: str) -> list[KernelCall]:
  """Every `tpu_custom_call` of the module. XLA's cost_analysis counts such a
  call's operands and outputs but none of its FLOPs unless the kernel gave a
  cost estimate; the roofline prices the ones that give none
  (`aot/kernel_cost.py`)."""
  computations, entry = split_computations(hlo_text)
  calls = []
  for name, (_, runs, in_loop) in _execution_contexts(computations, entry).items():
    for line in computations[name]:
      instruction = _INSTRUCTION.match(line)
      if not instruction or 'custom_call_target="tpu_custom_call"' not in line:
        continue
      constraints = re.search(r"operand_layout_constraints=\{(.*?)\}, [a-z_]+=", line)
      operands = tuple((dtype, tuple(_ints(dims))) for dtype, dims in
                       _ARRAY.findall(constraints.group(1) if constraints else "")
                       if dtype in ITEM_BYTES)
      calls.append(KernelCall(re.sub(r"\.\d+$", "", instruction.group(1).lstrip("%")),
                              operands, runs, in_loop))
  return calls
