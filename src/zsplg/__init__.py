"""zsplg: zero-shot pseudo labels for semi-supervised semantic segmentation.

The public API, one name per job (loaded on first use, so ``import zsplg``
and ``zsplg --help`` stay instant)::

    import zsplg

    spec = zsplg.load_class_spec("classes.txt")
    labeller = zsplg.Labeller.from_names(spec, masks="auto", vl="auto")
    annotation = labeller.label_array(rgb)             # .label, .confidence

    zsplg.run_label(zsplg.LabelConfig(classes="classes.txt", out="pseudo", images_dir="images"))
    zsplg.run_calibrate(zsplg.CalibrateConfig(pair_list="labelled.txt",
                                              classes="classes.txt", out="calibration.json"))
    zsplg.run_eval(zsplg.EvalConfig(pred="pseudo/labels", pair_list="val.txt",
                                    classes="classes.txt"))
    zsplg.run_train(zsplg.TrainConfig(labelled="labelled.txt", classes="classes.txt", out="run"))
    zsplg.run_predict(zsplg.PredictConfig(checkpoint="run/checkpoints/best.pt", out="pred",
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
    "run_label": ("zsplg.pipeline", "label"),
    "Calibration": ("zsplg.calibration.file", "Calibration"),
    "CalibrateConfig": ("zsplg.calibration.settings", "CalibrateConfig"),
    "run_calibrate": ("zsplg.calibration.run", "run_calibrate"),
    "EvalConfig": ("zsplg.evaluate", "EvalConfig"),
    "run_eval": ("zsplg.evaluate", "run_eval"),
    "TrainConfig": ("zsplg.train.config", "TrainConfig"),
    "run_train": ("zsplg.train.loop", "train"),
    "PredictConfig": ("zsplg.train.config", "PredictConfig"),
    "run_predict": ("zsplg.train.predict", "run_predict"),
    "Reporter": ("zsplg.runtime.progress", "Reporter"),
}

__all__ = [  # grouped by stage, as the docstring reads
    "IGNORE_INDEX", "__version__", "ClassSpec", "load_class_spec", "build_mask_generator",
    "build_vl_model", "Labeller", "LabelConfig", "run_label", "Calibration", "CalibrateConfig",
    "run_calibrate", "EvalConfig", "run_eval", "TrainConfig", "run_train", "PredictConfig",
    "run_predict", "Reporter",
]

if TYPE_CHECKING:
    from zsplg.calibration.file import Calibration
    from zsplg.calibration.run import run_calibrate
    from zsplg.calibration.settings import CalibrateConfig
    from zsplg.data.classes import ClassSpec, load_class_spec
    from zsplg.evaluate import EvalConfig, run_eval
    from zsplg.labeling.labeller import Labeller
    from zsplg.labeling.settings import LabelConfig
    from zsplg.masks import build_mask_generator
    from zsplg.pipeline import label as run_label
    from zsplg.runtime.progress import Reporter
    from zsplg.train.config import PredictConfig, TrainConfig
    from zsplg.train.loop import train as run_train
    from zsplg.train.predict import run_predict
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
