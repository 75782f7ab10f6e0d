"""NAB evaluation through the engine: results files, summary, alert sweep, baselines, plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service import scoring
from service.cli import main as streamwatch
from service.model import Forecaster, ModelCard, Normalization
from service.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import MODELS_DIR, sine
from training.baselines import write_baseline
from training.evaluate import run_nab
from training.export import export_model, load_torch_forecaster
from training.finetune import FinetuneConfig, finetune_stream
from training.model import Forecaster as TorchForecaster
from training.nab import NabFile, load_corpus, load_profiles, load_scores
from training.nab_replay import alert_openings, replay_corpus, score_detector
from training.nab_scoring import score_corpus, sweep

NAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"
# Real NAB series, cut short so the whole harness runs in a second or two; each keeps a
# window of its own (reading indices) inside what is left.
MINI_CORPUS = {
    "realTraffic/speed_7578.csv": (600, [(500, 560)]),
    "realAdExchange/exchange-2_cpc_results.csv": (500, [(400, 450)]),
    "artificialNoAnomaly/art_daily_small_noise.csv": (400, []),
}


@pytest.fixture(scope="module")
def mini_nab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NAB-shaped folder holding MINI_CORPUS: data/, labels/, config/."""
    if not (NAB_DIR / "config" / "profiles.json").is_file():
        pytest.fail(f"NAB corpus not found at {NAB_DIR} (shared/data/nab beside the repo)")
    root = tmp_path_factory.mktemp("nab")
    windows = {}
    for name, (length, spans) in MINI_CORPUS.items():
        lines = (NAB_DIR / "data" / name).read_text().splitlines()[: length + 1]
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_text("\n".join(lines) + "\n")
        stamps = [line.split(",")[0] for line in lines[1:]]
        windows[name] = [[stamps[a], stamps[b]] for a, b in spans]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    shutil.copytree(NAB_DIR / "config", root / "config")
    return root


@pytest.fixture(scope="module")
def evaluated(mini_nab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`streamwatch evaluate nab` on the mini corpus, with plots."""
    out = tmp_path_factory.mktemp("eval")
    status = streamwatch([
        "evaluate", "nab", str(mini_nab), "--model", "default", "--models-dir", str(MODELS_DIR),
        "--out", str(out), "--plot", str(out / "plots"),
    ])
    assert status == 0
    return out


def _summary(out: Path) -> dict[str, dict]:
    data = json.loads((out / "summary.json").read_text())
    return {d["detector"]: d for d in data["detectors"]}


def test_results_files_read_back_to_the_summarys_numbers(mini_nab: Path, evaluated: Path) -> None:
    corpus, profiles = load_corpus(mini_nab), load_profiles(mini_nab)
    summary = _summary(evaluated)["default"]
    scores = load_scores(evaluated / "results" / "default", "default")
    alerts = load_scores(evaluated / "results" / "default-alerts", "default-alerts")

    assert sorted(scores) == sorted(alerts) == sorted(MINI_CORPUS)
    for name, profile in profiles.items():
        readings = summary["profiles"]["readings"][name]
        assert sweep(corpus, scores, profile) == pytest.approx(
            (readings["swept"]["threshold"], readings["swept"]["score"])
        )
        configured = summary["profiles"]["alerts"][name]["configured"]["score"]
        assert score_corpus(corpus, alerts, 0.5, profile).normalized == pytest.approx(configured)
        swept = summary["profiles"]["alerts"][name]["swept"]["score"]
        assert swept >= configured  # the configured threshold is one of the candidates


def test_results_files_keep_nab_format_and_the_labels(mini_nab: Path, evaluated: Path) -> None:
    path = evaluated / "results" / "default" / "realTraffic" / "default_speed_7578.csv"
    header, *rows = path.read_text().splitlines()

    assert header == "timestamp,value,anomaly_score,label"
    assert len(rows) == 600
    assert [int(r.split(",")[3]) for r in rows[499:562]] == [0] + [1] * 61 + [0]
    assert rows[0].split(",")[:2] == ["2015-09-08 11:39:00", "73.0"]


def test_summary_has_categories_events_files_and_a_markdown_table(evaluated: Path) -> None:
    summary = _summary(evaluated)["default"]
    markdown = (evaluated / "summary.md").read_text()

    assert set(summary["categories"]) == {"realTraffic", "realAdExchange", "artificialNoAnomaly"}
    assert summary["categories"]["artificialNoAnomaly"]["standard"] is None  # no windows
    assert summary["events"]["configured"]["events"] == 2
    assert [f["name"] for f in summary["files"]] == sorted(MINI_CORPUS)
    assert summary["readings"] == 1500 and summary["refused"] == 0
    assert "| detector | standard | low FP | low FN |" in markdown
    assert "streamwatch evaluate nab" in markdown  # the command that reproduces it


def test_baselines_go_through_the_same_harness(mini_nab: Path, tmp_path: Path) -> None:
    reports = run_nab(
        mini_nab, "default", tmp_path, models_dir=MODELS_DIR, baselines=True,
        files="realTraffic/*",
    )
    summary = _summary(tmp_path)

    assert [r.detector for r in reports] == ["default", "baseline-last-value", "baseline-zscore"]
    assert list(summary) == ["default", "baseline-last-value", "baseline-zscore"]
    for r in reports[1:]:
        assert (tmp_path / "models" / r.detector / "card.json").is_file()
        assert len(list((tmp_path / "results" / r.detector).rglob("*.csv"))) == 1
        assert r.configured_threshold == reports[0].configured_threshold
        assert r.readings == 600 and r.events["configured"].events == 1
    # Three forecasters, three different score series: each went through its own model.
    series = [
        load_scores(tmp_path / "results" / r.detector, r.detector)["realTraffic/speed_7578.csv"]
        for r in reports
    ]
    assert len({s.tobytes() for s in series}) == 3


def test_plot_writes_one_png_per_file_and_detector(evaluated: Path) -> None:
    pngs = sorted((evaluated / "plots" / "default").glob("*.png"))

    assert [p.name for p in pngs] == [
        "artificialNoAnomaly__art_daily_small_noise.png",
        "realAdExchange__exchange-2_cpc_results.png",
        "realTraffic__speed_7578.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_alert_sweep_at_the_configured_threshold_finds_the_engines_own_alerts(
    mini_nab: Path,
) -> None:
    settings = Settings(model={"dir": MODELS_DIR}, alerts={"cooldown": 5})
    replayed = replay_corpus(load_corpus(mini_nab), ModelRegistry.load(settings.model), settings)
    threshold = replayed[0].threshold
    params = scoring.AlertParams(k=1, m=3, close_factor=10.0, cooldown=5)
    lower = 0.9

    openings = alert_openings(replayed, np.array([threshold, lower]), params)

    for r, (at_configured, _) in zip(replayed, openings, strict=True):
        assert at_configured.tolist() == np.flatnonzero(r.opened).tolist()
    assert sum(len(o) for o, _ in openings) > 0  # the comparison is not vacuous
    assert [o.tolist() for _, o in openings] != [o.tolist() for o, _ in openings]


def test_a_reading_the_server_refuses_scores_zero_and_is_counted(tmp_path: Path) -> None:
    n = 400
    stamps = np.datetime64("2020-01-01T00:00:00") + np.arange(n) * np.timedelta64(300, "s")
    stamps[200] = stamps[150]  # steps back in time, as a few NAB files do
    window = (stamps[300], stamps[320])
    file = NabFile("cat/back_in_time.csv", stamps, 5.0 + sine(n), (window,))
    settings = Settings(model={"dir": MODELS_DIR})

    (r,) = replay_corpus([file], ModelRegistry.load(settings.model), settings)
    report = score_detector("x", [r], load_profiles(NAB_DIR), scoring.AlertParams())

    assert r.refused == 1 and not r.applied[200] and r.score[200] == 0.0
    assert r.applied[199] and r.applied[201]
    assert report.refused == 1 and report.readings == n


def test_last_value_baseline_forecasts_the_last_reading_and_zscore_the_running_mean(
    tmp_path: Path,
) -> None:
    write_baseline("last-value", tmp_path / "last", threshold=0.999)
    write_baseline("zscore", tmp_path / "mean", threshold=0.999)
    x = np.array([[3.0], [-1.0]], np.float32)  # (batch, channels), standardized units
    last, mean = Forecaster.load(tmp_path / "last"), Forecaster.load(tmp_path / "mean")

    loc, scale, (h,) = last.step(x, last.initial_state(2))
    assert loc.tolist() == [[3.0], [-1.0]] and scale.tolist() == [[1.0], [1.0]]
    loc, scale, _ = mean.step(x, mean.initial_state(2))
    assert loc.tolist() == [[0.0], [0.0]] and scale.tolist() == [[1.0], [1.0]]
    assert h.shape == (1, 2, 1)


def test_unknown_model_is_a_clear_error(mini_nab: Path, tmp_path: Path, capsys) -> None:
    status = streamwatch([
        "evaluate", "nab", str(mini_nab), "--model", "nope", "--models-dir", str(MODELS_DIR),
        "--out", str(tmp_path),
    ])

    assert status == 1
    assert "no model 'nope'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GRU with random weights, exported as `streamwatch train` exports."""
    torch.manual_seed(0)
    model = TorchForecaster("gru", hidden_size=8, num_layers=1, channels=1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    out = tmp_path_factory.mktemp("models") / "small"
    export_model(model, out, _card("small", "gru", 8, 1), _wave(200))
    return out


def _card(name: str, cell: str, hidden: int, layers: int) -> ModelCard:
    return ModelCard(
        name=name, version="1", created="2026-01-01T00:00:00+00:00", cell=cell,  # type: ignore[arg-type]
        hidden_size=hidden, num_layers=layers, channels=["value"],
        normalization=Normalization(mean=[0.0], std=[1.0]),
        calibration=scoring.fit_calibration(np.abs(np.random.default_rng(0).normal(size=1000))),
        threshold=0.9999, opset=17, sha256="",
    )


def _wave(n: int) -> np.ndarray:
    return sine(n, period=17.0)[:, None, None].astype(np.float32)  # (time, streams, channels)


@pytest.mark.parametrize(("cell", "layers"), [("gru", 1), ("lstm", 2), ("rnn", 2)])
def test_a_models_weights_come_back_from_its_onnx_file(
    tmp_path: Path, cell: str, layers: int
) -> None:
    torch.manual_seed(1)
    model = TorchForecaster(cell, hidden_size=6, num_layers=layers, channels=1)  # type: ignore[arg-type]
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    export_model(model, tmp_path, _card("m", cell, 6, layers), _wave(100))

    back = load_torch_forecaster(tmp_path)

    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_a_graph_export_did_not_write_is_refused_for_fine_tuning(tmp_path: Path) -> None:
    write_baseline("zscore", tmp_path / "zscore", threshold=0.999)

    with pytest.raises(ValueError, match="not a graph training.export writes"):
        load_torch_forecaster(tmp_path / "zscore")


@pytest.mark.slow
def test_per_stream_model_is_fine_tuned_on_the_stretch_and_served(
    exported: Path, tmp_path: Path
) -> None:
    general = load_torch_forecaster(exported)
    card = Forecaster.load(exported).card
    values = (20.0 + 3.0 * sine(300, period=24.0, noise=0.2))[:, None]  # (time, channels)

    tuned = finetune_stream(general, card, values, tmp_path / "one", FinetuneConfig(epochs=3))

    served = Forecaster.load(tmp_path / "one")
    assert served.card.threshold == card.threshold and served.card.sha256 != card.sha256
    assert served.card.training["finetuned_from_sha256"] == card.sha256
    assert tuned.metrics["finetune_val_nll"] < tuned.training["general_val_nll"]
