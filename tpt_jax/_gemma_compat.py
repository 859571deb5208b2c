"""Makes `gemma` 3.3's checkpoint module import with current kauldron.

`gemma.gm.ckpts` (and with it `gm.nn.Gemma2_2B`, whose module imports it)
subclasses `kd.ckpts.AbstractPartialLoader`, which kauldron 1.4 renamed to
`InitTransform` with the same abstract interface (`transform(state)`). We
alias the old name before `gemma` is imported, so the library's own model
configs and checkpoint-layout code can be used instead of re-written. Import
this module before `gemma` (every tpt_jax module that uses gemma does).
"""

from kauldron import checkpoints as _kauldron_checkpoints

if not hasattr(_kauldron_checkpoints, 'AbstractPartialLoader'):
  _kauldron_checkpoints.AbstractPartialLoader = (
      _kauldron_checkpoints.InitTransform)
