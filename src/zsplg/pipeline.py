"""Stages composed: calibrate the labeller on labelled images, then label.

Labelling comes before calibration in the pipeline (calibration labels its
images with a Labeller), so labelling cannot apply a calibration by itself;
`label` here does both, in the order `zsplg label --calibrate-on` promises.
"""

from __future__ import annotations

from zsplg.calibration.run import use_calibration
from zsplg.data.classes import load_class_spec
from zsplg.data.sources import resolve_sources
from zsplg.labeling.labeller import Labeller
from zsplg.labeling.run import run_label
from zsplg.labeling.settings import LabelConfig, validate_label_config
from zsplg.runtime.progress import Reporter
from zsplg.runtime.ranks import Ranks


def label(config: LabelConfig, reporter: Reporter | None = None,
          labeller: Labeller | None = None, config_file: str | None = None) -> dict:
    """`zsplg label`: apply config.calibration, or fit one on config.calibrate_on
    (written to OUT/calibration.json, reused on resume), then label every image.

    Under torchrun rank 0 calibrates first and the other ranks reuse its file.
    labeller: already-built backends to use instead of the config's names.
    config_file: the --config file the settings came from (recorded in run.json).
    Returns what run.json records (`zsplg.labeling.run.run_label`).
    """
    if config.calibration or config.calibrate_on:
        validate_label_config(config)
        spec = load_class_spec(config.classes)
        resolve_sources(config.images_dir, config.pair_list)  # bad inputs fail before models load
        ranks = Ranks.from_env().join()
        labeller = labeller or Labeller.from_config(config, spec)
        with ranks.rank_zero_first():
            config, labeller = use_calibration(config, spec, labeller, reporter)
    return run_label(config, reporter, labeller, config_file)
