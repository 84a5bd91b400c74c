"""uamix-jax: uaMix-MAE (ICASSP 2024) contrastive tuning of AudioMAE in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="uamix-jax",
    version="0.1.0",
    description="uaMix-MAE: contrastive tuning of pretrained AudioMAE ViTs with unsupervised audio mixtures, in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["uamix_jax", "uamix_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "tensorflow-datasets>=4.9.10",
        "librosa>=0.11",
        "soundfile>=0.13",
        "soxr>=0.5",
        "numpy>=2.0",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",  # mAP, t-SNE
        "tensorboardX>=2.6",  # TensorBoard event files
        "mido>=1.3",  # benchmarks/offline_audio.py writes the MIDI that fluidsynth renders
        "safetensors>=0.4",  # .safetensors weights, read and written without torch (bfloat16 via ml_dtypes)
        "huggingface_hub>=0.26",  # hf-hub:ORG/NAME weights through the hub's cache
    ],
    extras_require={
        # Reading AudioMAE's .pth files. `pip install torch==2.13.0` first to take a CPU build.
        "convert": ["torch>=2.4"],
        # tfds.data_source over ArrayRecord datasets whose features need TensorFlow to decode (e.g. Audio).
        "tfds": ["tensorflow-cpu>=2.21"],
        # libtpu, the TPU compiler and runtime: training on a TPU VM, and tools/plan_tpu.py on any machine.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "test": [
            "jax[tpu]>=0.10.2,<0.11",  # the TPU plan's tests compile for TPU slices without a TPU
            "pytest>=8",
            "pytest-xdist>=3.5",
            "portpicker>=1.6",
            "hypothesis>=6.100",
            "kaldi-native-fbank>=1.20",
            "torch>=2.4",
            "scipy>=1.13",
            "tensorflow-cpu>=2.21",
            "tensorboard>=2.16",  # its EventAccumulator reads back the trainer's event files in the tests
            "papermill>=2.6",  # runs the Colab notebook top to bottom in the tests
            "ipykernel>=6.29",
        ],
    },
)
