"""`zsplg train` end to end on tiny generated data: every method and policy, resume,
configuration errors, and `zsplg predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from train_data import make_dataset, tiny_config_args
from typer.testing import CliRunner

from zsplg.cli import app
from zsplg.train.config import TrainConfig
from zsplg.train.loop import ResumeMismatchError, Trainer, train
from zsplg.train.targets import POLICIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train-data"))


def _run(data, out, **overrides) -> dict:
    return train(TrainConfig(**tiny_config_args(data, out, **overrides)))


@pytest.mark.parametrize("method,policy", [("supervised", "replace"), ("unimatch", "replace")]
                         + [("enhanced", p) for p in POLICIES])
def test_every_method_and_policy_trains(data, tmp_path, method, policy) -> None:
    out = tmp_path / "run"
    result = _run(data, out, method=method, policy=policy, iters=2)
    assert result["steps"] == 2 and result["miou"] is not None
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train_lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in train_lines)
    if method != "supervised":
        assert {"loss_u", "loss_x", "mask_ratio"} <= set(train_lines[0])
    assert any("val" in r for r in records)
    assert (out / "checkpoints" / "latest.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == method and resolved["_resolved"]["num_classes"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 3


def test_enhanced_targets_use_the_pseudo_labels(data, tmp_path) -> None:
    # with no confident teacher (threshold above 1) only pseudo labels can give targets
    out = tmp_path / "run"
    _run(data, out, method="enhanced", policy="confident-teacher", conf_thresh=1.0, iters=1)
    first = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert first["mask_ratio"] > 0.5  # about 90 % of the noisy pseudo label is kept
    out2 = tmp_path / "run2"
    _run(data, out2, method="unimatch", conf_thresh=1.0, iters=1)
    assert json.loads((out2 / "history.jsonl").read_text().splitlines()[0])["mask_ratio"] == 0


def test_pseudo_min_confidence_leaves_unsure_pixels_to_the_teacher(data, tmp_path) -> None:
    # no confident teacher: the mask ratio is the share of pseudo-label pixels kept
    ratios = {}
    for floor in (0.0, 0.5):
        out = tmp_path / f"run{floor}"
        _run(data, out, method="enhanced", policy="confident-teacher", conf_thresh=1.0, iters=1,
             pseudo_min_confidence=floor)
        ratios[floor] = json.loads((out / "history.jsonl").read_text().splitlines()[0])[
            "mask_ratio"]
    assert 0.05 < ratios[0.5] < 0.75 * ratios[0.0]  # the unsure right halves are dropped
    with pytest.raises(ValueError, match="pseudo_min_confidence"):
        _run(data, tmp_path / "bad", method="enhanced", pseudo_min_confidence=1.5)


def test_a_setting_added_later_resumes_at_its_default(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, method="supervised", iters=1)
    latest = out / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=False)
    del state["config"]["pseudo_min_confidence"]  # as a run made before the setting existed
    torch.save(state, latest)
    _run(data, out, method="supervised", iters=1)  # no mismatch reported
    with pytest.raises(ResumeMismatchError, match="pseudo_min_confidence"):
        _run(data, out, method="supervised", iters=1, pseudo_min_confidence=0.5)


def test_resume_after_interruption_equals_uninterrupted(data, tmp_path, monkeypatch) -> None:
    settings = dict(method="unimatch", iters=4, conf_thresh=0.0)
    full_out = tmp_path / "full"
    _run(data, full_out, **settings)

    out = tmp_path / "cut"
    original = Trainer._one_step

    def crash_at_step_two(self, step, streams):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step, streams)

    monkeypatch.setattr(Trainer, "_one_step", crash_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        _run(data, out, **settings)
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(Trainer, "_one_step", original)
    _run(data, out, **settings)

    full = torch.load(full_out / "checkpoints" / "latest.pt", weights_only=False)
    resumed = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert resumed["step"] == full["step"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    def losses(path):
        return [json.loads(line).get("loss") for line in path.read_text().splitlines()]
    assert losses(out / "history.jsonl") == losses(full_out / "history.jsonl")


def test_changed_settings_refused_on_resume(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, method="supervised", iters=1)
    with pytest.raises(ResumeMismatchError, match="lr"):
        _run(data, out, method="supervised", iters=1, lr=0.5)
    _run(data, out, method="supervised", iters=1, lr=0.5, overwrite=True)


def test_missing_pseudo_labels_named(data, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no pseudo label"):
        _run(data, tmp_path / "run", method="enhanced", pseudo_labels=str(empty))


runner = CliRunner()


def test_cli_yaml_config_and_flag_override(data, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config_args(data, out, method="supervised", iters=5)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", "--config", str(path), "--iters", "1"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["iters"] == 1


def test_cli_unknown_key_and_bad_value_fail_before_work(data, tmp_path) -> None:
    cfg = tiny_config_args(data, tmp_path / "run")
    cfg["learning_rate"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "learning_rate" in result.output
    result = runner.invoke(app, ["train", "--labelled", str(data["labelled"]), "--classes",
                                 str(data["classes"]), "--out", str(tmp_path / "r2"),
                                 "--method", "fixmatch"])
    assert result.exit_code == 2 and "fixmatch" in result.output
    assert not (tmp_path / "r2").exists()


def test_predict_writes_labels_and_overlays(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, method="supervised", iters=1)
    pred = tmp_path / "pred"
    for mode in ("whole", "sliding"):
        result = runner.invoke(app, ["predict", str(out / "checkpoints" / "best.pt"),
                                     str(data["unlabelled"]), "--out", str(pred / mode),
                                     "--mode", mode, "--window", "24"])
        assert result.exit_code == 0, result.output
        label = np.array(Image.open(pred / mode / "labels" / "u0.png"))
        image = Image.open(data["unlabelled"] / "u0.png")
        assert label.shape == (image.height, image.width) and label.max() < 3
        assert (pred / mode / "overlays" / "u0.jpg").is_file()
        info = json.loads((pred / mode / "run.json").read_text())
        assert info["counts"]["predicted"] == 4


def test_predict_bad_checkpoint_is_named(tmp_path, data) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["predict", str(bad), str(data["unlabelled"]), "--out",
                                 str(tmp_path / "p")])
    assert result.exit_code == 2 and "bad.pt" in result.output


def test_pseudo_labels_matched_by_file_name_when_keys_differ(data, tmp_path) -> None:
    # labelled from a list (keys "unlabelled/u0"), trained from the folder (keys "u0")
    nested = tmp_path / "label-run" / "labels" / "unlabelled"
    nested.mkdir(parents=True)
    for png in (data["pseudo"] / "labels").glob("*.png"):
        (nested / png.name).write_bytes(png.read_bytes())
    out = tmp_path / "run"
    _run(data, out, method="enhanced", pseudo_labels=str(tmp_path / "label-run"), iters=1)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["_resolved"]["pseudo_labels_found"] == 4


def test_tensorboard_scalars_written(data, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _run(data, out, method="unimatch", iters=2, tensorboard=True)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_u", "train/mask_ratio", "train/lr", "val/miou"} <= tags
    assert any(tag.startswith("val_iou/") for tag in tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_accumulation_and_head_lr_multiplier(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, method="supervised", iters=2, accumulate=2, lr=0.01,
         head_lr_multiplier=10.0)
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "head"]
    # the last step ran at poly(step 1 of 2): lr * 0.5 ** 0.9, the head 10x that
    assert groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert groups[1]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_before_any_work(data, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--device cuda: no usable CUDA GPU"):
        _run(data, out, method="supervised", iters=1, device="cuda")
    assert not out.exists()
    result = runner.invoke(app, ["train", "--labelled", str(data["labelled"]), "--classes",
                                 str(data["classes"]), "--out", str(out), "--method",
                                 "supervised", "--device", "cuda"])
    assert result.exit_code == 2 and "no usable CUDA GPU" in result.output
    assert "Traceback" not in result.output


def test_predict_config_refuses_what_the_command_refuses() -> None:
    from zsplg.train.predict import PredictConfig

    with pytest.raises(ValueError, match=r"exactly one"):
        PredictConfig(checkpoint="c", out="o").validate()
    with pytest.raises(ValueError, match="--mode: 'tiled' is not one of whole, sliding"):
        PredictConfig(checkpoint="c", out="o", images_dir="i", mode="tiled").validate()
