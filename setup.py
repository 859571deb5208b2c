"""tpt_jax: Think, Prune, Train for Gemma2 in JAX."""

import setuptools

setuptools.setup(
    name='tpt_jax',
    version='0.1.0',
    description=('Think, Prune, Train: self-improving reasoning for Gemma2 '
                 'with JAX on TPU/GPU/CPU.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['tpt_jax', 'tpt_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        # gemma 3.3 is the newest release that supports Python 3.11; our code
        # uses its `gm.nn.Transformer` + config API, which 4.x reorganised.
        'gemma==3.3.0',
        # 0.2.1+ ships protobuf-7 generated code; TensorFlow pins protobuf 6.
        'sentencepiece==0.2.0',
        # Hugging Face tokenizer.json (Llama-3, GPT-2 checkpoints).
        'tokenizers',
        'jax',
        'flax',
        'optax',
        'orbax-checkpoint',
        'tensorflow-datasets',
        # tfds 4.9 imports it when preparing a dataset but does not declare it.
        'importlib_resources',
        'ml-collections',
        'absl-py',
        'safetensors',
        'sympy',
        'tqdm',
        'matplotlib',
    ],
    extras_require={
        # libtpu: the TPU runtime on a TPU VM, and the TPU compiler that
        # `python -m tpt_jax.plan` uses on any Linux x86-64 host. jax's own
        # extra picks the libtpu that pairs with the installed jax.
        'tpu': ['jax[tpu]'],
        'test': [
            # tests/test_plan.py compiles for TPU slices on the CPU (a 213 MB
            # wheel; installs in ~10 s). Elsewhere those tests are skipped.
            "jax[tpu]; sys_platform == 'linux' and platform_machine == "
            "'x86_64'",
            'pytest',
            # Reference implementation for the Hugging Face checkpoint path.
            # 2.13.0 is the CPU build this project's machines carry.
            'torch==2.13.0',
            'transformers',
            # Executes notebooks/ headless, as CI does.
            'nbclient',
            'nbformat',
            'ipykernel',
        ],
    },
)
