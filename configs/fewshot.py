"""Few-shot evaluation of a frozen encoder (the paper's Table 2 and Fig. 3): N-way K-shot nearest class centroid.

    python -m uamix_jax.main --config=configs/fewshot.py --workdir=OUT --config.init_from=ENC \
        --config.data.name=esc50 --config.data.root=DIR

ENC: a converted AudioMAE directory (tools/convert_audiomae.py), an AudioMAE .pth, a stage-1/2 training workdir, or
'' for a random init of `model.size`, optionally named for the table and figure as LABEL=ENC. Writes
OUT/fewshot/<dataset>_<N>way<K>shot.json and prints a table; <dataset> is data.label when set, else the folder's
(or manifest file's) base name for `folder`/`manifest` data, else data.name. The clip embeddings are cached in
OUT/embeddings/ and reused while encoder and inputs are unchanged; clips that cannot be read are listed in
OUT/bad_audio.txt (as training lists its own in its workdir).

    --config.sweep=True            N in {5, 10, 15, 20} x K in {1, 5}; the plot OUT/fewshot/<dataset>_sweep.png
    --config.compare=AudioMAE=ckpt/audiomae,uaMix-MAE=W2
                                   more encoders ([label=]path, comma separated), drawn as lines in one figure;
                                   their JSONs go to OUT/fewshot/<label>/
    --config.crop=windows --config.clip_seconds=60
                                   long clips (VoxCeleb): mean embedding of consecutive 10 s windows

Variants: ':demo' evaluates the training demo's workdirs (e.g. --config.init_from=/tmp/uamix_demo/stage2
--config.compare=/tmp/uamix_demo/stage1 --config.data.root=/tmp/uamix_demo/data); ':test' is the tiny test setting.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "fewshot"
    c.init_from = ""  # "[label=]path"; path '' = random init of model.size
    c.compare = ""  # more encoders: "[label=]path,[label=]path"; the first line of the figure is init_from
    c.seed = 0  # episodes (and the random init)
    c.dtype = "float32"  # encoder compute dtype; "bfloat16" on TPU/GPU
    c.precision = "default"  # jax.default_matmul_precision of the encoder: 'default' | 'high' | 'highest'

    c.data = ml_collections.ConfigDict()
    c.data.name = "esc50"  # esc50|speechcommands|nsynth|voxceleb1|fsdkaggle2018|audioset|manifest|folder|tfds
    c.data.root = ""
    c.data.split = ""  # keep only this split ("" = every clip)
    c.data.tfds_name = ""  # data.name='tfds': the prepared dataset, e.g. "speech_commands"
    c.data.stats = "audioset"  # normalisation of the frozen AudioSet encoder's input
    c.data.label = ""  # the dataset's name in output files and titles ('' = folder base name, or data.name)

    c.model = ml_collections.ConfigDict()
    c.model.size = "base"  # only for the random init
    # frames per window; 0 = the encoder's own (its checkpoint's pos_embed or its workdir's config.json; 1024 for
    # AudioMAE's released weights and the random init)
    c.model.target_length = 0
    c.model.posemb = ""  # '' = the checkpoint's own table; 'prefix' / 'audiomae' override (models/posemb.py)

    c.crop = "centre"  # or "windows": mean embedding of consecutive target_length windows (long clips)
    c.clip_seconds = 30.0  # at most this much audio per clip (the centre); 'centre' reads at most one window
    c.batch_size = 32
    c.worker_count = 2  # grain decoding processes (0: decode in the main process)
    c.progress = True

    c.ways = 5
    c.shots = 1
    c.queries = 15
    c.episodes = 600
    c.sweep = False  # N in {5, 10, 15, 20} x K in {1, 5} and the Fig. 3 plot

    if arg in ("demo", "test"):
        c.data.name = "folder"
        c.model.size = "test"
        c.clip_seconds = 2.0
        c.batch_size = 16
        c.worker_count = 0
        c.queries = 5
        c.model.target_length = 128  # the demo's T (configs/stage2.py:demo)
        if arg == "test":
            c.episodes = 100
            c.batch_size = 8
            c.progress = False
    elif arg not in (None, ""):
        raise ValueError(f"configs/fewshot.py: variant must be '', 'demo' or 'test', got {arg!r}")
    return c
