"""HBM traffic of a compiled TPU program, read from its buffers.

XLA's `cost_analysis()['bytes accessed']` counts every operand and result of
every instruction, whatever memory it lives in. On TPU the compiler moves
weights into the chip's on-core memory (VMEM, memory space `S(1)` in the
compiled HLO) before a matmul reads them, and that count includes the copy's
read, its write and the matmul's read again: one bf16 [2304, 9216] weight
times a [32, 2304] activation, compiled for v5e, counts 5.0x the weight's
bytes. A decode step, which mostly reads weights, so looks 3-5x slower than
the HBM roofline whatever its code does.

`hbm_traffic` counts instead what the compiled program moves to and from HBM
(memory space 0): each top-level instruction's operands and results that
live there, once; an in-place update (scatter, dynamic-update-slice into an
aliased buffer) by its update only; a gather or dynamic-slice of a fusion's
operand by what it takes. Loops are counted once per known trip. It is an
estimate from the compiler's own buffer placement, not a measurement: the
plan prints it beside XLA's figure and says which its time uses.
"""

from __future__ import annotations

import dataclasses
import re

_ITEM_BYTES = {
    'pred': 1, 's4': 1, 'u4': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1,
    'f8e5m2': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
    'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'c128': 16,
}
# One array shape with its layout, e.g. bf16[8,128]{1,0:T(8,128)(2,1)S(1)}.
_ARRAY = re.compile(r'\b([a-z]+[0-9a-z]*)\[([0-9,]*)\](\{[^}]*\})?')
_MEMORY_SPACE = re.compile(r'S\((\d+)\)')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
# Opcodes that move no data themselves (views, bookkeeping, the end of an
# async operation whose start is counted).
_FREE = frozenset((
    'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
    'after-all', 'partition-id', 'replica-id', 'copy-done', 'slice-done',
    'all-gather-done', 'all-reduce-done', 'collective-permute-done',
    'async-done', 'send-done', 'recv-done', 'opt-barrier', 'iota'))
# Ops inside a fusion that read only part of their first operand.
_PARTIAL_READS = frozenset(('gather', 'dynamic-slice', 'slice'))
_IN_PLACE = {'scatter': 2, 'dynamic-update-slice': 1}  # -> update operand


@dataclasses.dataclass(frozen=True)
class _Instruction:
  name: str
  shape: str
  opcode: str
  operands: tuple[str, ...]
  arguments: str  # The call's text, e.g. '3' for parameter(3).
  attributes: str


@dataclasses.dataclass(frozen=True)
class HbmTraffic:
  """Bytes a compiled program reads from and writes to HBM, per chip.

  Attributes:
    bytes: reads + writes of memory space 0.
    loops_without_trip_count: while loops counted once for want of a known
      trip count (then `bytes` is a lower bound).
    largest: the instructions that move the most, as (bytes, name, the
      jax operation they come from), largest first.
  """
  bytes: int
  loops_without_trip_count: int = 0
  largest: tuple[tuple[int, str, str], ...] = ()


def _array_bytes(shape: str, *, hbm_only: bool) -> int:
  total = 0
  for dtype, dims, layout in _ARRAY.findall(shape):
    if dtype not in _ITEM_BYTES:
      continue
    if hbm_only:
      space = _MEMORY_SPACE.search(layout or '')
      if space and space.group(1) != '0':
        continue
    count = 1
    for dim in filter(None, dims.split(',')):
      count *= int(dim)
    total += count * _ITEM_BYTES[dtype]
  return total


def _tuple_elements(shape: str) -> list[str]:
  """The top-level elements of a tuple shape '(a, (b, c), d)'."""
  shape = shape.strip()
  if not shape.startswith('('):
    return [shape]
  elements, depth, start = [], 0, 1
  for i, char in enumerate(shape):
    if char in '({[':
      depth += 1
    elif char in ')}]':
      depth -= 1
    if (char == ',' and depth == 1) or (char == ')' and depth == 0):
      elements.append(shape[start:i].strip())
      start = i + 1
  return [e for e in elements if e]


def _split_call(rest: str) -> tuple[str, str]:
  """The call's arguments and the attributes after them, from the text
  after the opcode's '('."""
  depth = 1
  for i, char in enumerate(rest):
    depth += {'(': 1, ')': -1}.get(char, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ''


def parse_computations(hlo_text: str
                       ) -> tuple[dict[str, list[_Instruction]], str]:
  """Computations by name, and the entry computation's name."""
  computations: dict[str, list[_Instruction]] = {}
  entry, current = '', None
  for line in hlo_text.splitlines():
    if current is None:
      # Headers start at column 0 (instructions are indented).
      match = None if line[:1].isspace() else _COMPUTATION.match(line)
      if match:
        current = match.group(2)
        computations[current] = []
        if match.group(1):
          entry = current
      continue
    if line.strip() == '}':
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match:
      arguments, attributes = _split_call(match.group(4))
      computations[current].append(_Instruction(
          name=match.group(1), shape=match.group(2), opcode=match.group(3),
          operands=tuple(re.findall(r'%([\w.\-]+)', arguments)),
          arguments=arguments, attributes=attributes))
  if not entry:
    raise ValueError('No ENTRY computation in the HLO text.')
  return computations, entry


def _called(instruction: _Instruction, key: str) -> str | None:
  match = re.search(key + r'=%?([\w.\-]+)', instruction.attributes)
  return match.group(1) if match else None


def _users(instructions: list[_Instruction]
           ) -> dict[str, list[_Instruction]]:
  users: dict[str, list[_Instruction]] = {}
  for instruction in instructions:
    for operand in instruction.operands:
      users.setdefault(operand, []).append(instruction)
  return users


def _taken_bytes(computations: dict[str, list[_Instruction]], name: str,
                 users: dict[str, list[_Instruction]]) -> int | None:
  """Bytes that the partial reads (gathers, slices, through bitcasts and
  nested fusions) take of value `name`; None if something reads it all
  (or it is the computation's result)."""
  if not users.get(name):
    return None
  total = 0
  for user in users[name]:
    if user.opcode == 'bitcast':
      part = _taken_bytes(computations, user.name, users)
    elif user.opcode in _PARTIAL_READS and user.operands[:1] == (name,):
      part = _array_bytes(user.shape, hbm_only=False)
    elif user.opcode == 'fusion' and user.operands.count(name) == 1:
      nested = computations.get(_called(user, 'calls') or '', [])
      index = user.operands.index(name)
      params = [i for i in nested if i.opcode == 'parameter' and
                int(i.arguments) == index]
      part = (_taken_bytes(computations, params[0].name, _users(nested))
              if params else None)
    else:
      part = None
    if part is None:
      return None
    total += part
  return total


def _fusion_operand_bytes(computations: dict[str, list[_Instruction]],
                          fused: list[_Instruction], operand_shapes: list[str]
                          ) -> int:
  """HBM bytes a fusion reads from its operands: a parameter used only as
  the source of gathers / slices counts what they take; the buffer an
  in-place root updates counts nothing (its update is the write)."""
  users = _users(fused)
  root = fused[-1]
  in_place_buffer = (root.operands[0] if root.opcode in _IN_PLACE and
                     root.operands else None)
  total = 0
  for instruction in fused:
    if instruction.opcode != 'parameter':
      continue
    index = int(instruction.arguments)
    if index >= len(operand_shapes) or instruction.name == in_place_buffer:
      continue
    full = _array_bytes(operand_shapes[index], hbm_only=True)
    part = (_taken_bytes(computations, instruction.name, users) if full
            else None)
    total += full if part is None else min(full, part)
  return total


def _trip_count(instruction: _Instruction,
                computations: dict[str, list[_Instruction]]) -> int | None:
  """A while loop's trip count: XLA's known_trip_count, else N from a
  condition `counter < N` on a constant (a scan or fori_loop from 0)."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"',
                    instruction.attributes)
  if known:
    return int(known.group(1))
  condition = computations.get(_called(instruction, 'condition') or '', [])
  if not condition or condition[-1].opcode != 'compare' or (
      'direction=LT' not in condition[-1].attributes):
    return None
  constants = {i.name: i.arguments for i in condition
               if i.opcode == 'constant'}
  bound = condition[-1].operands[1:2]
  if bound and bound[0] in constants and constants[bound[0]].isdigit():
    return int(constants[bound[0]])
  return None


def hbm_traffic(hlo_text: str, *, num_largest: int = 10) -> HbmTraffic:
  """Bytes the compiled program (`compiled.as_text()`) moves to and from
  HBM per chip; see the module docstring."""
  computations, entry = parse_computations(hlo_text)
  missing_trip_counts = 0
  moved: list[tuple[int, str, str]] = []

  def record(instruction: _Instruction, count: int) -> int:
    op_name = re.search(r'op_name="([^"]*)"', instruction.attributes)
    moved.append((count, instruction.name,
                  op_name.group(1) if op_name else ''))
    return count

  def computation_bytes(name: str) -> int:
    nonlocal missing_trip_counts
    instructions = computations.get(name, [])
    shapes = {i.name: i.shape for i in instructions}
    total = 0
    for instruction in instructions:
      opcode = instruction.opcode
      operand_shapes = [shapes.get(o, '') for o in instruction.operands]
      if opcode in _FREE:
        continue
      if opcode == 'while':
        body = _called(instruction, 'body')
        trips = _trip_count(instruction, computations)
        if trips is None:
          missing_trip_counts += 1
        total += computation_bytes(body) * (trips or 1)
        continue
      if opcode == 'conditional':
        branches = re.search(r'branch_computations=\{([^}]*)\}',
                             instruction.attributes)
        names = (re.findall(r'%?([\w.\-]+)', branches.group(1))
                 if branches else [_called(instruction, 'true_computation'),
                                   _called(instruction, 'false_computation')])
        total += max((computation_bytes(n) for n in names if n), default=0)
        continue
      if opcode == 'call':
        total += computation_bytes(_called(instruction, 'to_apply') or '')
        continue
      if opcode in ('copy-start', 'slice-start'):
        # Results: copy-start (destination, source, context), slice-start
        # ((sources), destination, context). Counted: the part read, if
        # from HBM, and the write, if to HBM.
        elements = _tuple_elements(instruction.shape)
        destination = elements[1 if opcode == 'slice-start' else 0]
        taken_bytes = _array_bytes(destination, hbm_only=False)
        source_in_hbm = any(_array_bytes(s, hbm_only=True)
                            for s in operand_shapes)
        total += record(instruction, (taken_bytes if source_in_hbm else 0) +
                        _array_bytes(destination, hbm_only=True))
        continue
      output = _array_bytes(instruction.shape, hbm_only=True)
      if opcode == 'fusion':
        fused = computations.get(_called(instruction, 'calls') or '', [])
        if fused:
          root = fused[-1]
          if root.opcode in _IN_PLACE:
            update = root.operands[_IN_PLACE[root.opcode]]
            update_shape = {i.name: i.shape for i in fused}.get(update, '')
            output = min(output, _array_bytes(update_shape, hbm_only=False))
          total += record(instruction, output + _fusion_operand_bytes(
              computations, fused, operand_shapes))
          continue
      if opcode in _IN_PLACE and len(operand_shapes) > _IN_PLACE[opcode]:
        # Into its (aliased) first operand: reads and writes the update.
        update = _array_bytes(operand_shapes[_IN_PLACE[opcode]],
                              hbm_only=False)
        total += record(instruction, 2 * update + sum(
            _array_bytes(s, hbm_only=True) for i, s in
            enumerate(operand_shapes) if i not in (0, _IN_PLACE[opcode])))
        continue
      if opcode in _PARTIAL_READS and operand_shapes:
        # Reads what it takes from its first operand (plus any indices).
        read = min(_array_bytes(operand_shapes[0], hbm_only=True),
                   _array_bytes(instruction.shape, hbm_only=False))
        total += record(instruction, output + read + sum(
            _array_bytes(s, hbm_only=True) for s in operand_shapes[1:]))
        continue
      total += record(instruction, output + sum(
          _array_bytes(s, hbm_only=True) for s in operand_shapes))
    return total

  total = computation_bytes(entry)
  moved.sort(key=lambda item: -item[0])
  return HbmTraffic(bytes=total, loops_without_trip_count=missing_trip_counts,
                    largest=tuple(moved[:num_largest]))
