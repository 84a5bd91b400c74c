"""Few-shot evaluation of frozen encoders (the paper's Table 2 and Fig. 3): N-way K-shot nearest class centroid.

    python -m uamix_jax.main --config=configs/fewshot.py --workdir=OUT --config.init_from=ENC \
        --config.data.name=esc50 --config.data.root=DIR

ENC: a converted AudioMAE directory (tools/convert_audiomae.py), an AudioMAE .pth, a training workdir, or '' for a
random init of `model.size`, optionally named for the table and figure as LABEL=ENC. Writes
OUT/fewshot/<dataset>_<N>way<K>shot.json and prints a table; <dataset> is data.label when set, else the folder's
(or manifest file's) base name for `folder`/`manifest` data, else data.name. The clip embeddings are cached in
OUT/embeddings/ and reused while encoder and inputs are unchanged; clips that cannot be read are listed in
OUT/bad_audio.txt (as training lists its own in its workdir).

    --config.fewshot.sweep=True    N in {5, 10, 15, 20} x K in {1, 5}; the plot OUT/fewshot/<dataset>_sweep.png
    --config.compare=AudioMAE=ckpt/audiomae,uaMix-MAE=W2
                                   more encoders ([label=]path, comma separated), scored on the same episodes as
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
    c.compare = ""  # more encoders: "[label=]path,[label=]path"; the first line of the figure is init_from
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
