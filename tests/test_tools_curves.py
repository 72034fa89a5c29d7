"""Training curves: `core run` leaves curves.png in the run folder; `core curves` redraws it."""

from PIL import Image

from core.cli import main
import numpy as np

from core.tools.curves import DPI, Panel, Series, curve_panels, plot_panels


def test_a_run_folder_gets_training_curves(tiny_pipeline_config, run_tiny_pipeline, tmp_path, capsys):
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    with Image.open(run_dir / "curves.png") as picture:  # loss, parts, lr, mAP, rank-1: 3 rows of 2 panels
        assert picture.format == "PNG" and picture.size == (2 * 420, 3 * 260)
    (run_dir / "curves.png").unlink()
    assert main(["curves", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()


def test_panels_hold_losses_lr_and_each_test_sets_metric():
    lines = [{"event": "eval", "global_step": 0, "a/mAP": 10.0, "b/mAP": 5.0, "a/person/mAP": 1.0},
             {"event": "train", "global_step": 1, "lr": 0.1, "loss": 2.0, "ce": 1.5, "ce/acc": 0.1,
              "images_per_s": 9.0, "images_seen": 64},
             {"event": "eval", "global_step": 1, "a/mAP": 20.0, "b/mAP": 8.0}]
    panels = {p.title: p for p in curve_panels(lines, metrics=["mAP"])}
    assert [s.name for s in panels["loss"].series] == ["loss", "ce"]
    assert [s.name for s in panels["logged loss parts"].series] == ["ce/acc"]
    assert [s.name for s in panels["mAP (%)"].series] == ["a", "b"]  # per category left out
    assert panels["mAP (%)"].series[0].ys == [10.0, 20.0]


def test_the_figure_plots_each_series_on_a_shared_step_axis():
    panels = [Panel("loss", [Series("loss", [1, 2, 3], [3.0, 2.0, 1.5]), Series("ce", [1, 2, 3], [2.0, 1.0, 0.5])]),
              Panel("mAP (%)", [Series("a", [0, 3], [10.0, 20.0], markers=True)]),
              Panel("lr", [Series("lr", [1, 2, 3], [1e-3, 1e-4, 1e-5])], log_y=True)]
    fig = plot_panels(panels, columns=2, size=(400, 250), title="t")
    assert tuple(fig.get_size_inches() * DPI) == (800, 500)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in axes] == ["loss", "mAP (%)", "lr"]
    lines = axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["loss", "ce"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[1].get_ydata(), [2.0, 1.0, 0.5])
    assert axes[1].get_lines()[0].get_marker() == "o"
    assert axes[2].get_yscale() == "log"
    assert all(ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] >= 3 for ax in axes)  # one step axis


def test_an_empty_panel_says_no_data_instead_of_failing():
    fig = plot_panels([Panel("loss", [Series("loss", [], [])])])
    assert [t.get_text() for t in fig.axes[0].texts] == ["no data"]


def test_a_cut_or_edited_metrics_line_is_one_line_naming_it(tiny_pipeline_config, run_tiny_pipeline, tmp_path,
                                                             capsys):
    """A metrics.jsonl whose last line was cut (a run stopped while writing it) or a line
    edited into something else: `core curves` names the file and line, exit 2 (it was a raw
    `JSONDecodeError: Expecting ',' delimiter: line 1 column 264`, exit 1)."""
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    for text, n in (("".join(lines)[:-40], len(lines)), ("".join(lines[:1]) + "[1, 2]\n" + "".join(lines[1:]), 2)):
        metrics.write_text(text)
        assert main(["curves", str(run_dir), "--out", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert f"metrics.jsonl:{n}: not a JSON record" in err and "repair or delete that line" in err, err
        assert err.count("\n") == 1, err


def test_curves_out_in_a_folder_not_made_yet_is_written(tmp_path):
    """It was '[Errno 2] No such file or directory: '<out>.tmp''; extract and export make theirs."""
    from core.tools.curves import write_curves

    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "global_step": 1, "loss": 1.0, "lr": 0.1}\n')
    assert write_curves(tmp_path, tmp_path / "new" / "sub" / "c.png").is_file()
