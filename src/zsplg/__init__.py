"""zsplg: zero-shot pseudo labels for semi-supervised semantic segmentation.

The public API, one name per job (loaded on first use, so ``import zsplg``
and ``zsplg --help`` stay instant)::

    import zsplg

    spec = zsplg.load_class_spec("classes.txt")
    labeller = zsplg.Labeller.from_names(spec, masks="auto", vl="auto")
    annotation = labeller.label_array(rgb)             # .label, .confidence

    zsplg.label(zsplg.LabelConfig(classes="classes.txt", out="pseudo", images_dir="images"))
    zsplg.calibrate(zsplg.CalibrateConfig(pair_list="labelled.txt", classes="classes.txt",
                                          out="calibration.json"))
    zsplg.evaluate(zsplg.EvalConfig(pred="pseudo/labels", pair_list="val.txt",
                                    classes="classes.txt"))
    zsplg.train(zsplg.TrainConfig(labelled="labelled.txt", classes="classes.txt", out="run"))
    zsplg.predict(zsplg.PredictConfig(checkpoint="run/checkpoints/best.pt", out="pred",
                                      images_dir="new-images"))

Long calls take ``reporter=``, a :class:`Reporter` (silent when omitted).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

IGNORE_INDEX = 255

# public name -> (module, attribute)
_API = {
    "ClassSpec": ("zsplg.data.classes", "ClassSpec"),
    "load_class_spec": ("zsplg.data.classes", "load_class_spec"),
    "build_mask_generator": ("zsplg.masks", "build_mask_generator"),
    "build_vl_model": ("zsplg.vl", "build_vl_model"),
    "Labeller": ("zsplg.labeling.labeller", "Labeller"),
    "LabelConfig": ("zsplg.labeling.settings", "LabelConfig"),
    "label": ("zsplg.pipeline", "label"),
    "Calibration": ("zsplg.calibration.file", "Calibration"),
    "CalibrateConfig": ("zsplg.calibration.settings", "CalibrateConfig"),
    "calibrate": ("zsplg.calibration.run", "run_calibrate"),
    "EvalConfig": ("zsplg.evaluate", "EvalConfig"),
    "evaluate": ("zsplg.evaluate", "run_eval"),
    "TrainConfig": ("zsplg.train.config", "TrainConfig"),
    "train": ("zsplg.train.loop", "train"),
    "PredictConfig": ("zsplg.train.config", "PredictConfig"),
    "predict": ("zsplg.train.predict", "run_predict"),
    "Reporter": ("zsplg.runtime.progress", "Reporter"),
}

__all__ = [  # grouped by stage, as the docstring reads
    "IGNORE_INDEX", "__version__", "ClassSpec", "load_class_spec", "build_mask_generator",
    "build_vl_model", "Labeller", "LabelConfig", "label", "Calibration", "CalibrateConfig",
    "calibrate", "EvalConfig", "evaluate", "TrainConfig", "train", "PredictConfig", "predict",
    "Reporter",
]

if TYPE_CHECKING:
    from zsplg.calibration.file import Calibration
    from zsplg.calibration.run import run_calibrate as calibrate
    from zsplg.calibration.settings import CalibrateConfig
    from zsplg.data.classes import ClassSpec, load_class_spec
    from zsplg.evaluate import EvalConfig
    from zsplg.evaluate import run_eval as evaluate
    from zsplg.labeling.labeller import Labeller
    from zsplg.labeling.settings import LabelConfig
    from zsplg.masks import build_mask_generator
    from zsplg.pipeline import label
    from zsplg.runtime.progress import Reporter
    from zsplg.train.config import PredictConfig, TrainConfig
    from zsplg.train.loop import train
    from zsplg.train.predict import run_predict as predict
    from zsplg.vl import build_vl_model


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'zsplg' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
