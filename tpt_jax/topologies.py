"""TPU slices by their Cloud names: chip specs, and abstract devices to compile for.

`get_topology('v5e-16')` gives the slice's libtpu topology string
('v5e:4x4'), how many chips it has and each chip's HBM, peak dense bf16
FLOP/s and HBM bandwidth (public Cloud TPU figures). `abstract_devices`
turns it into `jax.Device`s of that slice through libtpu's ahead-of-time
compiler (`jax.experimental.topologies`): no TPU needs to be attached, so a
CPU host can compile a program for the slice and read its memory and cost.

Names follow Cloud TPU: v4-N and v5p-N count TensorCores (two per chip,
run as one "megacore" device), v5e-N and v6e-N count chips.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Sequence

import jax

GIB = 1024**3
INSTALL_HINT = "pip install -e '.[tpu]'  (libtpu==0.0.42.1 pairs with jax 0.10.2)"


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """One TPU chip.

  Attributes:
    generation: 'v4', 'v5e', 'v5p' or 'v6e'.
    hbm_bytes: HBM per chip.
    peak_bf16_flops: dense bf16 FLOP/s per chip.
    hbm_bytes_per_s: HBM bandwidth per chip.
    chip_config_name: libtpu's chip config ('megacore': one device per chip
      of two TensorCores).
    cores_per_chip_in_name: what the N of a slice name counts per chip.
    usable_hbm_bytes: what XLA leaves a program (its RESOURCE_EXHAUSTED
      messages: "available HBM (15.75G)" on v5e, 30.75G on v4); the full HBM
      where we have not seen it.
  """
  generation: str
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float
  chip_config_name: str
  cores_per_chip_in_name: int
  usable_hbm_bytes: int


CHIPS: dict[str, ChipSpec] = {
    'v4': ChipSpec('v4', 32 * GIB, 275e12, 1228e9, 'megacore', 2,
                   int(30.75 * GIB)),
    'v5e': ChipSpec('v5e', 16 * GIB, 197e12, 819e9, 'default', 1,
                    int(15.75 * GIB)),
    'v5p': ChipSpec('v5p', 95 * GIB, 459e12, 2765e9, 'megacore', 2, 95 * GIB),
    'v6e': ChipSpec('v6e', 32 * GIB, 918e12, 1640e9, 'default', 1, 32 * GIB),
}

# Chip grid of each slice size (chips), as libtpu names it.
_GRIDS_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4',
             128: '4x4x8', 256: '4x8x8'}
_GRIDS_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8',
             128: '8x16', 256: '16x16'}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice.

  Attributes:
    name: the Cloud name, e.g. 'v5e-16'.
    libtpu_name: libtpu's topology string, e.g. 'v5e:4x4'.
    num_chips: chips (= jax devices) in the slice.
    chips_per_host_bounds: chips of one host along each grid axis.
    chip: the chip's specs.
  """
  name: str
  libtpu_name: str
  num_chips: int
  chips_per_host_bounds: tuple[int, int, int]
  chip: ChipSpec


def _build_table() -> dict[str, Topology]:
  table = {}
  for generation, chip in CHIPS.items():
    grids = _GRIDS_3D if generation in ('v4', 'v5p') else _GRIDS_2D
    for num_chips, grid in grids.items():
      name = f'{generation}-{num_chips * chip.cores_per_chip_in_name}'
      bounds = (1, 1, 1) if num_chips == 1 else (2, 2, 1)
      table[name] = Topology(name=name, libtpu_name=f'{generation}:{grid}',
                             num_chips=num_chips,
                             chips_per_host_bounds=bounds, chip=chip)
  return table


TOPOLOGIES: dict[str, Topology] = _build_table()


class UnknownTopologyError(ValueError):
  """A slice name not in TOPOLOGIES; the message lists the known ones."""


class LibtpuMissingError(RuntimeError):
  """libtpu (the TPU compiler) is not installed; the message says how."""


def topology_table() -> str:
  """Every known slice: name, libtpu topology, chips, per-chip specs."""
  lines = [f'{"slice":<9} {"libtpu topology":<16} {"chips":>5} '
           f'{"HBM/chip":>9} {"bf16 TFLOP/s":>12} {"HBM GB/s":>9}']
  for topology in TOPOLOGIES.values():
    chip = topology.chip
    lines.append(
        f'{topology.name:<9} {topology.libtpu_name:<16} '
        f'{topology.num_chips:>5} {chip.hbm_bytes / GIB:>7.0f}Gi '
        f'{chip.peak_bf16_flops / 1e12:>12.0f} '
        f'{chip.hbm_bytes_per_s / 1e9:>9.0f}')
  return '\n'.join(lines)


def get_topology(name: str) -> Topology:
  """The slice called `name` (e.g. 'v5e-16'); libtpu strings ('v5e:4x4')
  are accepted too."""
  if name in TOPOLOGIES:
    return TOPOLOGIES[name]
  for topology in TOPOLOGIES.values():
    if topology.libtpu_name == name:
      return topology
  raise UnknownTopologyError(
      f'--topology={name!r} is not a known TPU slice. Known slices:\n'
      + topology_table())


def abstract_devices(topology: Topology) -> Sequence[jax.Device]:
  """The slice's devices, for ahead-of-time compilation only (libtpu)."""
  if importlib.util.find_spec('libtpu') is None:
    raise LibtpuMissingError(
        'Planning for a TPU slice needs libtpu (the TPU compiler; no TPU '
        f'needs to be attached). Install it: {INSTALL_HINT}')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # libtpu takes a host-wide lock file unless told that several processes
  # may load it; compiling ahead of time never touches a chip, so other
  # processes (another plan, a test run trying a TPU backend) need not
  # block this one.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=topology.libtpu_name,
        chip_config_name=topology.chip.chip_config_name,
        chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=1)
  except Exception as e:  # pylint: disable=broad-except
    if 'lockfile' in str(e):
      raise LibtpuMissingError(
          f'libtpu is held by a TPU backend of this process ({e}); plan in '
          'a process whose jax runs on the CPU: JAX_PLATFORMS=cpu.') from e
    raise LibtpuMissingError(
        f'libtpu could not describe {topology.name} ({topology.libtpu_name}): '
        f'{e}. Check the libtpu install: {INSTALL_HINT}') from e
  devices = list(description.devices)
  if len(devices) != topology.num_chips:
    raise RuntimeError(
        f'libtpu gives {len(devices)} devices for {topology.libtpu_name}; '
        f'{topology.name} has {topology.num_chips} chips.')
  return devices
