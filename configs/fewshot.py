"""Few-shot evaluation of frozen encoders (the paper's Table 2 and Fig. 3): N-way K-shot nearest class centroid.

    python -m uamix_jax.main --config=configs/fewshot.py --workdir=OUT --config.init_from=ENC \
        --config.data.name=esc50 --config.data.root=DIR

ENC (and each item of config.compare) is an encoder spec, optionally named for the table, figure and JSON as NAME=ENC:

    PATH                      a converted AudioMAE directory (tools/convert_audiomae.py), an AudioMAE or timm weights
                              file (.pth, .pt, .bin, .safetensors), hf-hub:ORG/NAME[@REVISION], a training workdir,
                              or '' for a random init of `model.size`
    hear:MODULE[@MODEL_FILE]  any installed HEAR 2021 module (MODULE.load_model(MODEL_FILE or "")): each clip's centre
                              of at most data.clip_seconds, resampled to the model's sample_rate, unpadded, clips of
                              equal length batched together, through MODULE.get_scene_embeddings
    npz:FILE                  precomputed embeddings: an .npz with clip_ids [M] (the dataset's clip ids, as
                              Manifest.clip_ids gives them; for a folder layout the path relative to data.root) and
                              embeddings [M, D]; optionally valid [M] (False: the clip could not be embedded)

Every encoder is scored on the same episodes (each JSON's episodes_sha256 shows it); data.stats, data.crop and
model.* apply to PATH encoders only. Writes OUT/fewshot/<dataset>_<N>way<K>shot.json and prints a table; <dataset>
is data.label when set, else the folder's (or manifest file's) base name for `folder`/`manifest` data, else
data.name. The clip embeddings are cached in OUT/embeddings/ and reused while encoder and inputs are unchanged (a
HEAR module's while the module, its model file's path, size and mtime, the read length and the clips are); clips
that cannot be read are listed in OUT/bad_audio.txt (as training lists its own in its workdir) and left out for
every encoder.

    --config.fewshot.sweep=True    N in {5, 10, 15, 20} x K in {1, 5}; the plot OUT/fewshot/<dataset>_sweep.png
    --config.compare=AudioMAE=ckpt/audiomae,uaMix-MAE=W2,PaSST=hear:hear21passt.base,M2D=npz:m2d.npz
                                   more encoders (specs as ENC, comma separated), scored on the same episodes as
                                   init_from and drawn as lines in one figure; their JSONs go to
                                   OUT/fewshot/<label>/, and the paired difference of each against the first encoder
                                   is printed and written
    --config.data.crop=windows --config.data.clip_seconds=60
                                   long clips (VoxCeleb): mean embedding of consecutive 10 s windows

Variants: ':demo' evaluates the training demo's workdirs (e.g. --config.init_from=/tmp/uamix_demo/stage2
--config.compare=/tmp/uamix_demo/stage1 --config.data.root=/tmp/uamix_demo/fewshot_data); ':test' is the tiny test
setting.
"""
import ml_collections

from uamix_jax.config_base import add_evaluation, add_fewshot, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = base_config("fewshot")
    c.compare = ""  # more encoders: "[NAME=]ENC,[NAME=]ENC" (as init_from); the first line of the figure is init_from
    c.data.update(name="esc50", clip_seconds=30.0,  # at most this much audio per clip (its centre)
                  worker_count=2)
    # frames per window; 0 = the encoder's own (its checkpoint's pos_embed or its workdir's config.json; 1024 for
    # AudioMAE's released weights and the random init); posemb '' = the checkpoint's own table
    c.model.update(target_length=0, posemb="")
    add_evaluation(c)
    add_fewshot(c)

    if arg in ("demo", "test"):
        c.data.update(name="folder", clip_seconds=2.0, worker_count=0)
        c.model.update(size="test", target_length=128)  # the demo's T (configs/stage2.py:demo)
        c.eval.batch_size = 16
        c.fewshot.queries = 5
        if arg == "test":
            c.progress = False
            c.eval.batch_size = 8
            c.fewshot.episodes = 100
    elif arg not in (None, ""):
        raise ValueError(f"configs/fewshot.py: variant must be '', 'demo' or 'test', got {arg!r}")
    return c
