"""Tables and plots of a run's results, for any experiment.

A summary is a list of rows, each a label (a round, a SERT stage) with its
metrics and optional count columns. `format_table` prints it; `plot_rounds`
draws each metric against the round, `plot_stages` as grouped bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import os
from typing import Any

# Metrics shown as percentages (and plotted).
RATE_PREFIXES = ('pass@', 'maj@')
# Losses (e.g. the round's `heldout_loss`), shown with 3 decimals.
LOSS_SUFFIX = 'loss'


def format_metric(name: str, value: float | None) -> str:
  """A table cell: pass@/maj@ metrics as percentages, losses with 3
  decimals, '-' when missing."""
  if value is None:
    return '-'
  if name.startswith(RATE_PREFIXES):
    return f'{100 * value:.1f}%'
  if name.endswith(LOSS_SUFFIX):
    return f'{value:.3f}'
  return f'{value:.1f}'


def metrics_text(metrics: Mapping[str, float]) -> str:
  """'pass@1=41.2%, maj@4=50.0%, heldout_loss=0.812': the rates and losses
  of `metrics`, for log lines."""
  return ', '.join(f'{name}={format_metric(name, value)}'
                   for name, value in metrics.items()
                   if name.startswith(RATE_PREFIXES) or
                   (name.endswith(LOSS_SUFFIX) and value is not None))


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every metric of `rows` (each with 'metrics'), first-seen order, without
  'num_problems'."""
  names: list[str] = []
  for row in rows:
    for name in row['metrics']:
      if name not in names and name != 'num_problems':
        names.append(name)
  return names


def format_table(label: str, rows: Sequence[Mapping[str, Any]], *,
                 count_columns: Sequence[str] = ()) -> str:
  """A text table: a row per entry (`row[label]`), its metrics, then the
  `count_columns` of `row['counts']` ('-' where missing)."""
  names = metric_names(rows)
  header = [label, *names, *count_columns]
  table = []
  for row in rows:
    cells = [str(row[label])]
    cells.extend(format_metric(name, row['metrics'].get(name))
                 for name in names)
    counts = row.get('counts', {})
    cells.extend(str(counts.get(column, '-')) for column in count_columns)
    table.append(cells)
  widths = [max(len(r[i]) for r in [header, *table])
            for i in range(len(header))]
  return '\n'.join(
      '  '.join(cell.ljust(w) if i == 0 and label != 'round' else
                cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
      for r in [header, *table])


def _save(figure: Any, path: os.PathLike[str] | str) -> None:
  figure.tight_layout()
  path = os.fspath(path)
  tmp = path[:-len('.png')] + '.tmp.png' if path.endswith('.png') else (
      path + '.tmp.png')
  figure.savefig(tmp, dpi=100)
  os.replace(tmp, path)


def plot_rounds(title: str, rows: Sequence[Mapping[str, Any]],
                path: os.PathLike[str] | str) -> None:
  """Plots each pass@/maj@ metric against the round (`row['round']`)."""
  # The object API, not pyplot: no global backend switch for the caller.
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  rounds = [row['round'] for row in rows]
  names = sorted({name for row in rows for name in row['metrics']
                  if name.startswith(RATE_PREFIXES) and
                  not name.endswith('_se')})
  figure = figure_lib.Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  for name in names:
    values = [100 * row['metrics'].get(name, math.nan) for row in rows]
    axes.plot(rounds, values, marker='o', label=name)
  axes.set_xlabel('round')
  axes.set_ylabel('% of test problems')
  axes.set_xticks(rounds)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend()
  _save(figure, path)


def plot_stages(title: str, rows: Sequence[Mapping[str, Any]],
                path: os.PathLike[str] | str) -> None:
  """Grouped bars: each pass@/maj@ metric of each stage (`row['stage']`)."""
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  stages = [row['stage'] for row in rows]
  names = [name for name in metric_names(rows)
           if name.startswith(RATE_PREFIXES) and not name.endswith('_se')]
  figure = figure_lib.Figure(figsize=(max(6, 1.6 * len(stages)), 4))
  axes = figure.add_subplot()
  width = 0.8 / max(1, len(names))
  for index, name in enumerate(names):
    values = [100 * row['metrics'].get(name, math.nan) for row in rows]
    positions = [s + (index - (len(names) - 1) / 2) * width
                 for s in range(len(stages))]
    bars = axes.bar(positions, values, width, label=name)
    axes.bar_label(bars, fmt='%.1f', fontsize=7)
  axes.set_xticks(range(len(stages)))
  axes.set_xticklabels(stages, rotation=15, fontsize=8)
  axes.set_ylabel('% of test problems')
  axes.set_title(title, fontsize=9)
  axes.grid(axis='y', alpha=0.3)
  axes.legend(fontsize=8)
  _save(figure, path)


def finish(workdir: Any, table: str, timings: Any, summary_file: str,
           summary_plot: str) -> None:
  """The end of every experiment: timings saved (`workdir.Timings`), the
  table printed with where the summary and plot are."""
  timings.save()
  print('\n' + table, flush=True)
  print(f'\nSummary: {workdir / summary_file}, plot: '
        f'{workdir / summary_plot}; this invocation took '
        f'{timings.elapsed():.0f}s.', flush=True)
