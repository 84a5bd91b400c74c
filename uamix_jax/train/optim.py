"""Progressive freezing, layer-wise lr decay and AdamW, from one regex-on-parameter-path labeller.

Every parameter gets exactly one label from the first rule whose regex matches its '/'-joined path:
- ``frozen``: `optax.set_to_zero()`, no optimizer state, and the trainer keeps the old value bitwise;
- any other label: AdamW (decoupled decay on matrices only) with the shared warmup + cosine schedule, then the
  label's lr scale. Applying the scale after AdamW gives PyTorch param-group semantics: update = −s·lr·(adam + wd·p).

Stage 1 (head only) and stage 2 (top half + head, scale 0.65^(L−i) for block i of L) are two rule lists; fine-tuning
decays every block; pretraining trains everything as one group. The learning-rate schedule is `uamix_jax.schedules`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import optax
from absl import logging
from flax import traverse_util

FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class Group:
    """An optimizer group: lr multiplier and (decoupled, lr-scaled) weight decay."""

    lr_scale: float
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class Groups:
    """A task's optimizer groups: `rules` label every parameter path (first full regex match wins; FROZEN freezes),
    `groups` give each trained label its lr scale and weight decay."""

    rules: tuple[tuple[str, str], ...]
    groups: dict[str, Group]

    @property
    def scales(self) -> dict[str, float]:
        return {label: g.lr_scale for label, g in self.groups.items()}


def param_paths(params: Any) -> dict[str, Any]:
    """Flat {'encoder/blocks_3/attn/qkv/kernel': leaf} view of a nested param dict."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


def label_params(params: Any, rules: Sequence[tuple[str, str]]) -> Any:
    """Labels each leaf with the label of the first rule whose regex fully matches its path.

    Raises ValueError naming every unmatched path, so a renamed parameter can never silently train or freeze.
    """
    flat = param_paths(params)
    labels, unmatched = {}, []
    compiled = [(re.compile(rx), label) for rx, label in rules]
    for path in flat:
        label = next((lab for rx, lab in compiled if rx.fullmatch(path)), None)
        if label is None:
            unmatched.append(path)
        labels[path] = label
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} parameters match no optimizer rule: {unmatched[:8]}"
            f"{' ...' if len(unmatched) > 8 else ''}; rules: {[rx for rx, _ in rules]}"
        )
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in labels.items()})
    return nested


def stage_rules(stage: int, depth: int, layer_decay: float) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(rules, lr scale per label) for stage 1 (head only) or stage 2 (blocks ≥ depth/2, final norm, head).

    Stage 2 scale for block i (0-based) of L: layer_decay^(L − i); the final encoder norm and the head get 1.
    """
    if stage == 1:
        return [(r"encoder/.*", FROZEN), (r"head/.*", "head")], {"head": 1.0}
    if stage != 2:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    first_trained = depth // 2
    rules = [
        (r"encoder/(patch_embed|cls_token)(/.*)?", FROZEN),
        *[(rf"encoder/blocks_{i}/.*", FROZEN) for i in range(first_trained)],
        *[(rf"encoder/blocks_{i}/.*", f"block_{i:02d}") for i in range(first_trained, depth)],
        (r"encoder/(norm|fc_norm)/.*", "encoder_norm"),
        (r"head/.*", "head"),
    ]
    scales = {f"block_{i:02d}": layer_decay ** (depth - i) for i in range(first_trained, depth)}
    scales.update(encoder_norm=1.0, head=1.0)
    return rules, scales


NO_WEIGHT_DECAY = ("cls_token",)  # labels whose parameters never decay (AudioMAE's no_weight_decay list)


def finetune_rules(depth: int, layer_decay: float) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(rules, lr scale per label) for AudioMAE's fine-tuning: everything trains, layer-wise lr decay.

    AudioMAE's `param_groups_lrd` with L + 1 "layers": patch embedding and cls token (and the fixed positions, a
    constant here) get layer_decay^(L+1), block i (0-based) layer_decay^(L−i), the rest (fc_norm / norm, the
    classifier head) 1. The cls token has its own label, listed in NO_WEIGHT_DECAY: AudioMAE exempts it (and
    pos_embed) from weight decay, as `decay_mask` exempts every 1-D parameter and bias.
    """
    rules = [
        (r"encoder/patch_embed/.*", "embed"),
        (r"encoder/cls_token", "cls_token"),
        *[(rf"encoder/blocks_{i}/.*", f"block_{i:02d}") for i in range(depth)],
        (r"encoder/(norm|fc_norm)/.*", "encoder_norm"),
        (r"head/.*", "head"),
    ]
    scales = {"embed": layer_decay ** (depth + 1), "cls_token": layer_decay ** (depth + 1)}
    scales.update({f"block_{i:02d}": layer_decay ** (depth - i) for i in range(depth)})
    scales.update(encoder_norm=1.0, head=1.0)
    return rules, scales


def decay_mask(params: Any) -> Any:
    """True where decoupled weight decay applies: matrices and kernels, never biases or 1-D params."""
    flat = param_paths(params)
    mask = {k: (v.ndim > 1 and not k.endswith("bias")) for k, v in flat.items()}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in mask.items()})


def make_optimizer(
    params: Any,
    *,
    labels: Any,
    groups: dict[str, Group],
    schedule: optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """optax.partition over the labels: frozen → set_to_zero; group g → AdamW(wd_g, masked) · lr · scale_g."""
    mask = decay_mask(params)
    transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for name, group in groups.items():
        transforms[name] = optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(group.weight_decay, mask=mask),
            optax.scale_by_learning_rate(schedule),
            optax.scale(group.lr_scale),
        )
    used = set(jax.tree.leaves(labels))
    missing = used - set(transforms)
    if missing:
        raise ValueError(f"labels {sorted(missing)} have no optimizer group; groups: {sorted(groups)}")
    return optax.partition({k: v for k, v in transforms.items() if k in used}, labels)


def trainable_mask(labels: Any) -> Any:
    """True for every leaf that trains (label != frozen)."""
    return jax.tree.map(lambda lab: lab != FROZEN, labels)


def split_trainable(params: Any, mask: Any) -> tuple[Any, Any]:
    """(trainable, frozen) param trees; each has None where the other has the leaf."""
    trainable = jax.tree.map(lambda m, p: p if m else None, mask, params)
    frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
    return trainable, frozen


def merge_trainable(trainable: Any, frozen: Any) -> Any:
    """Inverse of `split_trainable`."""
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None)


def count_params(params: Any, mask: Any | None = None) -> int:
    """Number of scalars (of the leaves where `mask` is True, when given)."""
    leaves = jax.tree.leaves(params)
    flags = jax.tree.leaves(mask) if mask is not None else [True] * len(leaves)
    return int(sum(x.size for x, m in zip(leaves, flags) if m))


def log_assignment(params: Any, labels: Any, scales: dict[str, float], log: Callable[[str], None] = logging.info) -> str:
    """Logs (and returns) one line per label: #tensors, #params, lr scale, and the first paths it covers."""
    flat_p, flat_l = param_paths(params), param_paths(labels)
    lines = []
    for label in sorted(set(flat_l.values())):
        paths = [k for k, v in flat_l.items() if v == label]
        size = sum(flat_p[k].size for k in paths)
        scale = "-" if label == FROZEN else f"{scales.get(label, 1.0):.4g}"
        lines.append(f"  {label:<13} {len(paths):4d} tensors {size:12,d} params  lr x {scale:<7} e.g. {paths[0]}")
    text = "optimizer groups:\n" + "\n".join(lines)
    log(text)
    return text
