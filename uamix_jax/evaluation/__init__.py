"""Evaluation of frozen encoders: few-shot episodes (the paper's Table 2 and Fig. 3) and loading tuned encoders.

  episodes.py      N-way K-shot episode sampling on the host (index arrays, seeded)
  fewshot.py       the jitted nearest-centroid evaluator over all episodes, mean ± 1.96·std/√E
  embed.py         clip embeddings under the few-shot input policy, batched and jitted, with the disk cache
  encoders.py      `load_encoder(path)` for converted AudioMAE dirs, .pth files and training workdirs
  plots.py         the Fig. 3-style PNG
  fewshot_main.py  `run_fewshot(config, workdir)`, the command behind configs/fewshot.py

Nothing is imported here, so importing one module stays light.
"""
