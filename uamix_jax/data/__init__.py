"""Datasets in: published layouts -> `Manifest` -> grain pipeline of fixed-shape 16 kHz waveform batches.

  manifest.py     the Manifest (numpy columns), the generic CSV manifest and the folder-per-class reader
  layouts.py      ESC-50, SpeechCommands v2, NSynth, VoxCeleb1, FSDKaggle2018 and `read_dataset(name, root)`
  audioset.py     AudioSet's segment CSVs and clip namings
  tfds_source.py  TFDS ArrayRecord datasets (the only module that imports tensorflow_datasets, lazily)
  pipeline.py     `make_pipeline`: seeded shuffle, process sharding, crop/pad, workers, resumable state
  bad_audio.py    `check_manifest`, the `bad_audio.txt` log
  summary.py      `dataset_summary`, printed at start-up
  synthetic.py    `make_demo_dataset`, synthetic labelled sound classes for the demo and tests

Nothing is imported here, so `import uamix_jax.data.pipeline` in a grain worker stays light.
"""
