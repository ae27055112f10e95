"""Targets for the unlabelled images: the teacher's own (UniMatch) or enhanced labels.

An enhanced label combines the zero-shot pseudo label with the teacher's
prediction. The paper does not say how, so each reasonable reading is a named
policy; ``benchmarks/semi_supervised.py`` compares them and the default is
the one it measured best. Every policy returns ``(target, weight)``: the
class per pixel (255 = no target) and how much that pixel counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zsplg import IGNORE_INDEX
from zsplg.choices import DEFAULT_TARGET_POLICY, TARGET_POLICIES

TargetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                    tuple[torch.Tensor, torch.Tensor]]


def teacher_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard class and its softmax confidence from detached teacher logits."""
    probs = logits.detach().float().softmax(dim=1)
    confidence, target = probs.max(dim=1)
    return target, confidence


def unimatch_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                     threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UniMatch: the teacher's class where it is confident; the pseudo label is unused."""
    del pseudo
    return teacher, (confidence >= threshold).float()


def replace_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot label replaces the teacher wherever it names a class; the
    confident teacher fills the pixels the zero-shot labeller left unlabelled."""
    has_pseudo = pseudo != IGNORE_INDEX
    target = torch.where(has_pseudo, pseudo, teacher)
    weight = torch.where(has_pseudo, torch.ones_like(confidence), (confidence >= threshold).float())
    return target, weight


def confident_teacher_targets(teacher: torch.Tensor, confidence: torch.Tensor,
                              pseudo: torch.Tensor, threshold: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher where it is confident, the zero-shot label elsewhere: the model
    takes over as it becomes reliable, the zero-shot label covers its doubts."""
    confident = confidence >= threshold
    has_pseudo = pseudo != IGNORE_INDEX
    target = torch.where(confident, teacher, pseudo)
    weight = (confident | has_pseudo).float()
    return target, weight


def agreement_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                      threshold: float, disagreement_weight: float = 0.5
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's class, weighted by agreement with the zero-shot label.

    Agreement is evidence from two independent sources, so agreeing pixels
    count fully even below the confidence threshold. Confident pixels the
    zero-shot label contradicts count ``disagreement_weight``; pixels without a
    zero-shot label follow UniMatch's confidence rule.
    """
    confident = (confidence >= threshold).float()
    has_pseudo = pseudo != IGNORE_INDEX
    agree = has_pseudo & (pseudo == teacher)
    weight = torch.where(agree, torch.ones_like(confident),
                         torch.where(has_pseudo, confident * disagreement_weight, confident))
    return teacher, weight


POLICIES: dict[str, TargetFn] = {
    "replace": replace_targets,
    "confident-teacher": confident_teacher_targets,
    "agreement": agreement_targets,
}
DEFAULT_POLICY = DEFAULT_TARGET_POLICY
assert tuple(POLICIES) == TARGET_POLICIES  # the CLI lists the names from zsplg.choices


def policy_targets(name: str) -> TargetFn:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown enhanced-label policy {name!r}; "
                         f"choose one of {', '.join(POLICIES)}") from None
