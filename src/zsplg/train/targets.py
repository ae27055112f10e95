"""Targets for the unlabelled images: the teacher's own (UniMatch) or enhanced labels.

An enhanced label combines the zero-shot pseudo label with the teacher's
prediction. The paper does not say how, so each reasonable reading is a named
policy. The default, ``reliability``, was fixed by design before the
three-seed runs of ``benchmarks/semi_supervised.py`` (which report it, never the
best of several policies). Every policy returns ``(target, weight)``: the
class per pixel (255 = no target) and how much that pixel counts.

``pseudo_weight`` is the estimated probability that each pseudo-labelled pixel is
right (the calibration's held-out reliability table looked up per class and
confidence, see ``zsplg.calibration.reliability``); only ``reliability`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zsplg import IGNORE_INDEX
from zsplg.choices import DEFAULT_TARGET_POLICY, TARGET_POLICIES

TargetFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def teacher_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard class and its softmax confidence from detached teacher logits."""
    probs = logits.detach().float().softmax(dim=1)
    confidence, target = probs.max(dim=1)
    return target, confidence


def unimatch_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                     threshold: float, pseudo_weight: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """UniMatch: the teacher's class where it is confident; the pseudo label is unused."""
    del pseudo, pseudo_weight
    return teacher, (confidence >= threshold).float()


def replace_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                    threshold: float, pseudo_weight: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot label replaces the teacher wherever it names a class; the
    confident teacher fills the pixels the zero-shot labeller left unlabelled."""
    del pseudo_weight
    has_pseudo = pseudo != IGNORE_INDEX
    target = torch.where(has_pseudo, pseudo, teacher)
    weight = torch.where(has_pseudo, torch.ones_like(confidence), (confidence >= threshold).float())
    return target, weight


def confident_teacher_targets(teacher: torch.Tensor, confidence: torch.Tensor,
                              pseudo: torch.Tensor, threshold: float,
                              pseudo_weight: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher where it is confident, the zero-shot label elsewhere: the model
    takes over as it becomes reliable, the zero-shot label covers its doubts."""
    del pseudo_weight
    confident = confidence >= threshold
    has_pseudo = pseudo != IGNORE_INDEX
    target = torch.where(confident, teacher, pseudo)
    weight = (confident | has_pseudo).float()
    return target, weight


def agreement_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                      threshold: float, pseudo_weight: torch.Tensor | None = None,
                      disagreement_weight: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's class, weighted by agreement with the zero-shot label.

    Agreement is evidence from two independent sources, so agreeing pixels
    count fully even below the confidence threshold. Confident pixels the
    zero-shot label contradicts count ``disagreement_weight``; pixels without a
    zero-shot label follow UniMatch's confidence rule.
    """
    del pseudo_weight
    confident = (confidence >= threshold).float()
    has_pseudo = pseudo != IGNORE_INDEX
    agree = has_pseudo & (pseudo == teacher)
    weight = torch.where(agree, torch.ones_like(confident),
                         torch.where(has_pseudo, confident * disagreement_weight, confident))
    return teacher, weight


def reliability_targets(teacher: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor,
                        threshold: float, pseudo_weight: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pseudo-labelled pixel counts as much as it is likely to be right.

    The weight of a pseudo-labelled pixel is its estimated reliability (how often
    the labeller was right, held out on the labelled images, at that class and
    confidence). The teacher takes over where it is confident (UniMatch's rule)
    and more confident than the pseudo label is reliable, so a good model is not
    pulled back to a poor pseudo label, and a poor pseudo label costs little.
    Pixels without a pseudo label follow UniMatch.
    """
    has_pseudo = pseudo != IGNORE_INDEX
    confident = confidence >= threshold
    reliability = (torch.ones_like(confidence) if pseudo_weight is None
                   else pseudo_weight.to(confidence.dtype))
    teacher_takes = ~has_pseudo | (confident & (confidence > reliability))
    target = torch.where(teacher_takes, teacher, pseudo)
    weight = torch.where(teacher_takes, confident.to(confidence.dtype), reliability)
    return target, weight


POLICIES: dict[str, TargetFn] = {
    "reliability": reliability_targets,
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
