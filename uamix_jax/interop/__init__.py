"""AudioMAE / PyTorch checkpoints both ways (docs/interop.md).

  audiomae.py        AudioMAE state dict → Flax encoder (`convert_state_dict`), converted directories, `load_audiomae`
  export.py          Flax encoder / workdir → AudioMAE's PyTorch format (tools/export_audiomae.py), NNCLR head
  workdir.py         reading a training workdir: `is_training_workdir`, `restore_state_dict`, `assign_tree`
  weights_io.py      one reader of weights as users find them: `.pth`/`.pt`/`.bin`, `.safetensors`, hf-hub: names
  torch_io.py        safe `.pth` reading (torch imported lazily)
  torch_audiomae.py  PyTorch references of AudioMAE's encoders and the NNCLR head (imports torch)
  torch_mae.py       PyTorch reference of AudioMAE's plain-decoder MAE (imports torch)
  mae_keys.py        AudioMAE plain-decoder keys → Flax decoder params
"""
