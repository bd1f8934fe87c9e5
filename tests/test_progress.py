"""Progress where stderr is not a terminal: plain lines, periodically, with count, rate and ETA."""

from __future__ import annotations

from rich.progress import BarColumn, TextColumn

from vitqbench.progress import LogProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_at_most_every_interval_with_rate_and_eta(capsys):
    clock = Clock()
    bar = progress_bar(TextColumn("[bold]decoding[/] {task.description}"), BarColumn(), get_time=clock)
    assert isinstance(bar, LogProgress)  # pytest's stderr is not a terminal
    with bar:
        task = bar.add_task("digits:train:[0-5]", total=100)  # ":train:" is an emoji name, [..] not markup
        for _ in range(50):  # 50 images, one every 0.5 s: 25 s
            clock.now += 0.5
            bar.advance(task, 1)
        for _ in range(50):
            clock.now += 0.5
            bar.advance(task, 1)
    lines = capsys.readouterr().err.splitlines()
    # a line at 10, 20, 30, 40 s, and the final one at 50 s
    assert len(lines) == 5, lines
    assert lines[0] == "decoding digits:train:[0-5]: 20/100 (20 %), 2/s, 10 s elapsed, eta 40 s"
    assert lines[-1] == "decoding digits:train:[0-5]: 100/100 (100 %), 2/s, 50 s elapsed, done"


def test_every_update_with_zero_interval_and_description_after_counts(capsys):
    clock = Clock()
    with progress_bar(TextColumn("train"), TextColumn("{task.description}"), log_interval=0, get_time=clock) as bar:
        task = bar.add_task("", total=3)
        for epoch in range(3):
            clock.now += 2
            bar.update(task, advance=1, description=f"loss {1 / (epoch + 1):.3f}")
        bar.update(task, visible=False)  # not an update of progress: no line
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "train: 1/3 (33 %), 0.5/s, 2 s elapsed, eta 4 s, loss 1.000",
        "train: 2/3 (67 %), 0.5/s, 4 s elapsed, eta 2 s, loss 0.500",
        "train: 3/3 (100 %), 0.5/s, 6 s elapsed, done, loss 0.333",
    ]


def test_disabled_prints_nothing(capsys):
    with progress_bar(TextColumn("x"), enabled=False) as bar:
        bar.advance(bar.add_task("x", total=2), 2)
    assert capsys.readouterr().err == ""


def test_train_prints_an_epoch_line_in_a_log(tmp_path, capsys):
    from vitqbench.train import TrainConfig, train_model

    config = TrainConfig(data="digits:train:0-2", epochs=2, model_kwargs={"img_size": 8, "depth": 1, "embed_dim": 32})
    train_model(config, tmp_path / "m.safetensors", cache_dir=tmp_path)
    epochs = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    assert [line.split(",")[0] for line in epochs] == ["train: 1/2 (50 %)", "train: 2/2 (100 %)"]
    assert "held-out acc" in epochs[-1]
