"""notebooks/tpt_demo.ipynb runs headless, top to bottom, as in Colab.

Its parameters cell is replaced by a smaller demo (the full one is timed by
its config's docstring, not here).
"""

import os
import pathlib
import sys

import nbclient
import nbformat

_REPO = pathlib.Path(__file__).resolve().parents[1]

_SMALL_DEMO = {
    'model.variant': 'gemma2_tiny',
    'task.num_train_problems': 12,
    'task.num_test_problems': 8,
    'sampling.num_samples_per_problem': 2,
    'sampling.max_new_tokens': 16,
    'sampling.show_progress': False,
    'loop.num_rounds': 1,
    'loop.warmup.num_examples': 16,
    'train.num_steps': 2,
    'train.progress_bar': False,
}


def test_the_demo_notebook_runs_and_shows_both_curves(tmp_path, monkeypatch):
  # The kernel is `python` on PATH: make it this interpreter (as an activated
  # virtual environment does).
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep +
                     os.environ.get('PATH', ''))
  notebook = nbformat.read(_REPO / 'notebooks' / 'tpt_demo.ipynb',
                           as_version=4)
  parameter_cells = [cell for cell in notebook.cells
                     if 'parameters' in cell.metadata.get('tags', [])]
  assert len(parameter_cells) == 1
  parameter_cells[0].source = (f'WORKDIR = {str(tmp_path / "demo")!r}\n'
                               f'OVERRIDES = {_SMALL_DEMO!r}\n'
                               'RUN_ABLATION = True\n')
  client = nbclient.NotebookClient(
      notebook, timeout=900, kernel_name='python3',
      resources={'metadata': {'path': str(_REPO / 'notebooks')}})
  client.execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.get('outputs', [])]
  text = ''.join(output.get('text', '') for output in outputs)
  assert 'pruning on round 0:' in text and 'pruning off round 0:' in text
  images = [output for output in outputs
            if 'image/png' in output.get('data', {})]
  assert len(images) == 2  # summary.png and the with/without pruning plot.
  assert (tmp_path / 'demo' / 'summary.json').is_file()
  assert (tmp_path / 'demo_no_pruning' / 'summary.json').is_file()
