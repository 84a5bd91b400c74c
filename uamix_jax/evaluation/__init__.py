"""Evaluation of encoders: few-shot episodes (the paper's Table 2 and Fig. 3), linear probes, metrics, loading.

  episodes.py      N-way K-shot episode sampling on the host (index arrays, seeded)
  fewshot.py       the jitted nearest-centroid evaluator over all episodes, mean ± 1.96·std/√E
  embed.py         clip embeddings under the few-shot input policy, batched and jitted, with the disk cache
  encoders.py      `load_encoder(path)` for converted AudioMAE dirs, weights files, hf-hub names and training
                   workdirs; `encoder_from(init_from, model)`: that, or a random init
  sources.py       encoder specs: our encoders, any HEAR 2021 module (hear:MODULE) or precomputed embeddings
                   (npz:FILE) as the few-shot driver's embedders
  fewshot_driver.py `score_fewshot`: every encoder on the same episodes, per-episode accuracies
  paired.py        paired differences of two encoders on the same episodes, within a seed and over seeds
  plots.py         the Fig. 3-style PNG
  fewshot_main.py  `run_fewshot(config, workdir)`, the command behind configs/fewshot.py
  periodic.py      `PeriodicFewShot`: few-shot accuracy every fewshot.every training steps
  metrics.py       mAP and top-1 accuracy over padded, masked evaluation batches
  protocol.py      train/test partitions (published splits, folds, a stratified 80/20 split) and result records
  linear_probe.py  `run_linear_probe(config, workdir)`: a linear classifier on frozen, cached embeddings

Nothing is imported here, so importing one module stays light.
"""
