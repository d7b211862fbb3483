"""The report: every number in it is metrics.json's, the HTML is the Markdown's twin, the plots are PNGs,
and ``selfcorrect report`` works on a run dir holding only metrics.json."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_metrics import md_tables, sample_metrics

from cluster.cli import main
from rl.report import before_after, read_train_log, write_report

PNG = b"\x89PNG\r\n\x1a\n"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def make_run(tmp_path: Path, metrics: dict | None = None, train_log: bool = True) -> Path:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics or sample_metrics()))
    if train_log:
        (run / "train").mkdir()
        lines = [
            {"step": s, "loss": 0.7 - 0.05 * s, "rewards/margins": 0.02 * s, "rewards/chosen": 0.01 * s,
             "rewards/rejected": -0.01 * s, "learning_rate": 5e-5, "epoch": s / 4}
            for s in range(1, 5)
        ]
        (run / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def html_parts(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def numbers(cell: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(cell)]


def close(shown: list[float], expected: list[float], decimals: int = 1) -> bool:
    """Numbers as printed with ``decimals`` decimals equal the exact ones."""
    return len(shown) == len(expected) and all(
        abs(s - e) <= 0.5 * 10**-decimals + 1e-9 for s, e in zip(shown, expected, strict=True)
    )


def table_with(tables, header0: str, column: str):
    return next(t for t in tables if t[0][0] == header0 and column in t[0])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"))
    summary = write_report(run)
    md = (run / "report" / "report.md").read_text()
    html = (run / "report" / "report.html").read_text()
    return run, summary, md, html


@pytest.mark.parametrize("form", ["md", "html"])
def test_every_number_in_the_tables_is_metrics_json(report, form):
    run, _, md, html = report
    m = sample_metrics()
    tables = md_tables(md) if form == "md" else html_parts(html).tables

    main_table = table_with(tables, "model", "Acc@t1 %")
    assert [r[0] for r in main_table[1:]] == list(m["models"])  # insertion order kept
    for row in main_table[1:]:
        model = m["models"][row[0]]
        for cell, key in zip(row[1:6], ["acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"], strict=True):
            iv = model[key]
            assert close(numbers(cell), [100 * iv["value"], 100 * iv["low"], 100 * iv["high"]]), (row[0], key, cell)
        assert int(row[6]) == model["unjudgeable"] and int(row[7]) == model["samples"]

    trans = table_with(tables, "model", "right→wrong")
    for row in trans[1:]:
        t = m["models"][row[0]]["transitions"]
        assert [int(x) for x in row[1:]] == [t["c2c"], t["c2i"], t["i2c"], t["i2i"]]

    comps = table_with(tables, "model", "p-value")
    assert len(comps) - 1 == len(m["comparisons"])
    for row, c in zip(comps[1:], m["comparisons"], strict=True):
        assert row[:3] == [c["model"], c["against"], c["metric"]] and row[6] == c["test"]
        assert (int(row[3]), int(row[4])) == (c["b"], c["c"])
        assert float(row[5]) == pytest.approx(c["p_value"], rel=5e-3)

    passk = table_with(tables, "model", "pass@1 %")
    trained = m["models"]["trained"]["pass_at_k"]
    assert [(r[0], r[1]) for r in passk[1:]] == [("trained", "t1"), ("trained", "t2")]
    for row in passk[1:]:
        assert close([float(x) for x in row[2:]], [100 * trained[row[1]][k] for k in ("1", "5")])

    pairwise = table_with(tables, "model", "win %")
    p = m["pairwise"][0]
    row = pairwise[1]
    assert row[:3] == [p["model"], p["against"], p["judge"]] and int(row[7]) == p["n"]
    assert close([float(x) for x in row[3:7]], [100 * p[k] for k in ("win", "tie", "loss", "score")])

    selfee = table_with(tables, "model", "K=0 %")
    for row in selfee[1:]:
        by_k = m["models"][row[0]]["selfee_k"]
        for k, cell in enumerate(row[1:]):
            iv = by_k[str(k)]
            assert close(numbers(cell), [100 * iv["value"], 100 * iv["low"], 100 * iv["high"]])

    speed = table_with(tables, "model", "problems/s")
    for row in speed[1:]:
        model = m["models"][row[0]]
        assert row[1] == model["model"] and int(row[2]) == model["problems"]
        assert close([float(row[3])], [model["seconds"]]) and close([float(row[4])], [model["problems_per_s"]], 2)


def test_html_is_the_markdown_with_the_plots_inlined(report):
    run, summary, md, html = report
    parts = html_parts(html)
    assert parts.tables == md_tables(md)
    assert len(parts.images) == len(summary["plots"]) == 4
    for src in parts.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert "src=\"http" not in html and "accuracy.png)" in md  # self-contained; the md links its files


def test_plots_are_pngs_and_only_those_with_data(report, tmp_path):
    run, summary, *_ = report
    assert summary["plots"] == ["accuracy.png", "selfee.png", "training.png", "transitions.png"]
    for name in summary["plots"]:
        data = (run / "report" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    bare = sample_metrics()
    for model in bare["models"].values():
        model["selfee_k"] = model["pass_at_k"] = None
    bare["comparisons"], bare["pairwise"] = [], []
    summary = write_report(make_run(tmp_path, bare, train_log=False))
    assert summary["plots"] == ["accuracy.png", "transitions.png"]
    md = Path(summary["report"]).read_text()
    assert "McNemar" not in md and "pass@" not in md and "SelFee" not in md and "No training metrics" in md


def test_train_log_keeps_the_last_record_of_each_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        '{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "loss": 0.5}\n'
        '{"step": 3, "loss": 0.55}\n{"step": 4, "loss": 0.4}\n{"step": 4, "lo'  # resumed after step 2; cut line
    )
    assert [(r["step"], r["loss"]) for r in read_train_log(f)] == [(1, 0.7), (2, 0.6), (3, 0.55), (4, 0.4)]


def test_before_after_table():
    text = before_after(sample_metrics())
    lines = text.splitlines()
    assert lines[0].split() == ["model", "Acc@t1", "Acc@t2", "Δ"]
    assert lines[1].split() == ["base", "41.0%", "38.0%", "-3.0", "pp"]
    assert lines[2].split() == ["trained", "45.5%", "48.8%", "+3.2", "pp"]


def test_report_command_on_a_run_dir_with_only_metrics(tmp_path, capsys):
    run = make_run(tmp_path, train_log=False)
    assert main(["report", "configs/quickstart.yaml", f"run_dir={run}"]) == 0
    err = capsys.readouterr().err
    assert (run / "report" / "report.html").exists() and (run / "report" / "report.md").exists()
    assert f"report: {run / 'report' / 'report.html'}" in err
    assert "base" in err and "45.5%" in err  # the before/after table
    assert not (run / "config.yaml").exists()  # a report does not pass for the run's config


def test_report_command_without_metrics_exits_2_naming_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["report", "configs/quickstart.yaml", f"run_dir={run}"]) == 2
    assert f"{run / 'eval' / 'metrics.json'}: no eval metrics" in capsys.readouterr().err
    assert not run.exists()
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text('{"version": 1, "models": ')
    assert main(["report", "configs/quickstart.yaml", f"run_dir={run}"]) == 2
    assert f"{run / 'eval' / 'metrics.json'}: not valid JSON (line 1)" in capsys.readouterr().err
    assert not (run / "report").exists()


def test_score_training_log_is_plotted_and_summarised():
    from rl.report import training_summary
    from rl.report_plots import plot_training

    log = [
        {"step": s, "loss": 0.1 * s, "reward_t1": 0.1, "reward_t2": 0.05 * s, "kl_t1": 0.001 * s, "kl_t2": 0.002}
        for s in range(1, 5)
    ]
    png = plot_training(log)
    assert png is not None and png.startswith(PNG)
    text = training_summary(log)
    assert "final reward_t2 0.2" in text and "final kl_t1 0.004" in text
    assert plot_training([{"step": 1, "learning_rate": 1e-4}]) is None  # nothing to draw


def test_example_rows_show_the_pictures_and_each_models_attempts(tmp_path):
    import io

    from PIL import Image
    from rl_rows import judged_row, judged_table

    from datagen.images import ImageStore, from_bytes, store_location
    from datagen.shards import StageDir

    run = make_run(tmp_path)
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "red").save(buf, format="PNG")
    picture = from_bytes(buf.getvalue())
    ImageStore(store_location(run)).put([picture])
    labels = list(sample_metrics()["models"])
    for k, label in enumerate(labels):
        rows = [
            judged_row(f"q{i}", 0, messages=[{"role": "user", "content": f"What colour? #{i}"}], reference="red",
                       images=[picture.image_id] if i == 0 else [], attempt1=f"blue {label}", attempt2=f"red {label}",
                       verifier_score1=0.0, verifier_score2=float(k % 2))
            for i in range(5)
        ]  # fmt: skip
        stage = StageDir(run / "eval" / label / "judge")
        stage.start({"stage": "judge"})
        stage.write_shard(0, judged_table(rows))
        stage.mark_done({"rows": 5})
    write_report(run)
    md = (run / "report" / "report.md").read_text()
    examples = md[md.index("## Examples") :]
    assert examples.count("### q") == 3 and "What colour? #0" in examples and "#3" not in examples
    name = f"example-{picture.image_id[:16]}.png"
    assert f"![the problem's image]({name})" in examples
    assert Image.open(run / "report" / name).size == (192, 144)  # a thumbnail beside the report
    assert f"| {labels[0]} | blue {labels[0]} | wrong | red {labels[0]} | wrong |" in examples
    html = (run / "report" / "report.html").read_text()
    assert base64.b64encode((run / "report" / name).read_bytes()).decode() in html
