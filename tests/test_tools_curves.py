"""Training curves: `core run` leaves curves.png in the run folder; `core curves` redraws it."""

from PIL import Image

from core.cli import main
from core.tools.curves import curve_panels, nice_ticks


def test_a_run_folder_gets_training_curves(tiny_pipeline_config, run_tiny_pipeline, tmp_path, capsys):
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    with Image.open(run_dir / "curves.png") as picture:
        assert picture.width >= 600 and picture.height >= 400
    (run_dir / "curves.png").unlink()
    assert main(["curves", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()


def test_panels_hold_losses_lr_and_each_test_sets_metric():
    lines = [{"event": "eval", "global_step": 0, "a/mAP": 10.0, "b/mAP": 5.0, "a/person/mAP": 1.0},
             {"event": "train", "global_step": 1, "lr": 0.1, "loss": 2.0, "ce": 1.5, "ce/acc": 0.1,
              "images_per_s": 9.0},
             {"event": "eval", "global_step": 1, "a/mAP": 20.0, "b/mAP": 8.0}]
    panels = {p.title: p for p in curve_panels(lines, metrics=["mAP"])}
    assert [s.name for s in panels["loss"].series] == ["loss", "ce"]
    assert [s.name for s in panels["logged loss parts"].series] == ["ce/acc"]
    assert [s.name for s in panels["mAP (%)"].series] == ["a", "b"]  # per category left out
    assert panels["mAP (%)"].series[0].ys == [10.0, 20.0]


def test_ticks_cover_the_data_range():
    for low, high in [(0.0, 3.36), (0.27, 0.55), (1e-5, 7.5e-4), (5.0, 5.0)]:
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 8
