"""`zsplg report`: one self-contained HTML page for a label, eval or train run folder.

A run folder is only useful if a person can see what is in it without writing
a script. The page shows whatever the folder holds, and says what is missing
instead of failing:

* label run (``run.json``, ``labels/``): settings, counts and timings, the pixel
  share of every class, a gallery of image / pseudo label / ground truth
  overlays (the worst, middle and best images by per-image mIoU where ground
  truth exists, else by the labeller's confidence, with a filter between
  them), and a computed evaluation when no eval JSON is there;
* eval run (``eval.json`` + ``eval_confusion.csv`` from `zsplg eval`): metrics
  table, per-class IoU bars, confusion-matrix heat map, top confusions, and
  the confidence floors when eval computed them;
* train run (``config.yaml``, ``history.jsonl``, ``metrics.json``): loss, LR and
  validation-mIoU curves plus the final metrics.

``facts`` reads the folder into plain data, ``gallery`` picks and draws the
gallery's images, ``charts`` draws SVG charts, and ``render`` fills the
Jinja2 template in ``templates/`` and writes the page.
"""

from zsplg.report.facts import ReportConfig, ReportOptions
from zsplg.report.render import default_report_path, render_report, write_report

__all__ = ["ReportConfig", "ReportOptions", "default_report_path", "render_report", "write_report"]
