from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import Forecaster
from training.calibrate import DEFAULT_THRESHOLD
from training.cli import main

TINY = ["--hidden", "8", "--epochs", "2", "--batch-size", "8", "--segment-len", "400"]


@pytest.mark.slow
def test_train_on_synthetic_data_writes_a_model_the_server_loads(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    argv = ["train", "--synthetic", "--synthetic-streams", "12", "--synthetic-length", "700"]
    argv += [*TINY, "--cell", "lstm", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    model = Forecaster.load(out)
    card = model.card
    assert card.name == "tiny" and card.cell == "lstm" and card.hidden_size == 8
    assert card.training["command"] == "streamwatch " + " ".join(argv)
    assert card.training["seed"] == 3
    assert card.training["data"]["synthetic"]["n_streams"] == 12
    assert card.threshold == DEFAULT_THRESHOLD
    assert 0.0 <= card.training["threshold"]["normal_rate"] <= 1.0
    assert card.metrics["onnx_parity_max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_train_on_a_folder_of_csv_files_uses_the_chosen_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "plant"
    data.mkdir()
    for name in ("a.csv", "b.csv"):
        rows = ["timestamp;temp;pressure;status"]
        walk = rng.normal(size=(800, 2)).cumsum(axis=0) + [20.0, 1000.0]
        rows += [f"{1_700_000_000 + 60 * i};{t:.3f};{p:.3f};ok" for i, (t, p) in enumerate(walk)]
        (data / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "plant-model"
    argv = ["train", "--data", str(data), "--columns", "pressure,temp", *TINY, "--out", str(out)]
    assert main(argv) == 0
    card = Forecaster.load(out).card
    assert card.channels == ["pressure", "temp"]
    assert [f["path"] for f in card.training["data"]["files"]] == [
        str(data / "a.csv"),
        str(data / "b.csv"),
    ]


def test_train_reports_a_bad_file_by_name_and_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n1,1\n2,NaN\n", encoding="utf-8")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "m")]) == 1
    assert f"{bad}:3: column 'value'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_columns_with_synthetic_data_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--synthetic", "--columns", "a", "--out", "x"])
    assert exit_info.value.code == 2
    assert "--columns picks columns of --data files" in capsys.readouterr().err


def test_a_subcommand_training_does_not_provide_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["compile"]) == 2
    assert "streamwatch compile: not a training command" in capsys.readouterr().err
