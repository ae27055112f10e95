"""Prompt templates: each class is embedded as the mean of several sentences.

Averaging a handful of phrasings is standard practice for zero-shot naming
(CLIP's prompt ensembles); it smooths out the quirks of any single sentence.
"""

from __future__ import annotations

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "an image containing a {}.",
)


def class_prompts(name: str, synonyms: tuple[str, ...] = (), prompts: tuple[str, ...] = (),
                  templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> list[str]:
    """Every template filled with the name and each synonym, plus the user's own prompts."""
    sentences = [template.format(word) for word in (name, *synonyms) for template in templates]
    return sentences + list(prompts)
