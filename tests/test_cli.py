"""The command line: demo, ingest, stats, rejected, and clean errors for a user's mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lifelong_rec.cli import main
from lifelong_rec.store import EventLog

T = 1_700_000_000


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifelong_rec", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_ingests_the_synthetic_stream_into_a_fresh_log(tmp_path, capsys):
    db = tmp_path / "demo.db"
    for _ in range(2):  # a second run starts afresh
        assert main(["demo", "--db", str(db), "--events", "3000", "--users", "100"]) == 0
        out = capsys.readouterr().out
    assert "cleaning report" in out and "bot_burst" in out and "stream statistics" in out
    assert "matrix factorisation (ALS)" in out
    assert out.count("top-10 for ") == 3 and "Because you looked at " in out
    assert "a brand-new item nobody has touched yet" in out  # the transformer's cold start
    with EventLog(db) as log:
        stats = log.stats()
    assert stats["batches"] == 1 and stats["quarantined"] > 0 and stats["events"] > 2500


def test_demo_json(tmp_path, capsys):
    assert main(["demo", "--db", str(tmp_path / "d.db"), "--events", "2000", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["report"]["accepted"] == payload["stream"]["events"] == payload["log"]["events"]
    model = payload["model"]
    assert model["fit_events"] + model["learned_events"] == payload["log"]["events"]
    for entry in payload["recommendations"]:
        assert len(entry["top10"]) == 10
        assert all(item["because"] for item in entry["top10"])
    deep = payload["transformer"]
    assert len(deep["ranks"]) == 2 and deep["because"]
    assert all(1 <= where["rank"] <= deep["items"] for where in deep["ranks"].values())


def test_ingest_csv_then_again_is_a_no_op(tmp_path, capsys):
    data = tmp_path / "events.csv"
    data.write_text(f"uid,iid,ts,what\n1,a,{T},view\n2,b,{T + 1},purchase\n3,,{T + 2},view\n")
    db = tmp_path / "e.db"
    args = ["ingest", str(data), "--format", "csv", "--db", str(db),
            "--map", "user=uid,item=iid,time=ts,kind=what", "--json"]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["appended"] == 2 and first["report"]["rejected"] == {"missing_id": 1}
    assert first["log"]["quarantined"] == 1
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["appended"] == 0 and second["already_in_log"] == 2
    assert second["log"]["events"] == 2 and second["log"]["quarantined"] == 1
    assert main([*args, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["log"]["events"] == 4


def test_ingest_writes_a_quarantine_file_and_rejected_lists_rows(tmp_path, capsys):
    data = tmp_path / "e.csv"
    data.write_text(f"user,item,timestamp\na,x,{T}\nb,y,not-a-time\n")
    db = tmp_path / "e.db"
    quarantine = tmp_path / "bad.jsonl"
    assert main(["ingest", str(data), "--db", str(db), "--quarantine", str(quarantine)]) == 0
    assert json.loads(quarantine.read_text())["reason"] == "bad_timestamp"
    capsys.readouterr()
    assert main(["rejected", "--db", str(db)]) == 0
    assert f"{data}:3: bad_timestamp: cannot read 'not-a-time'" in capsys.readouterr().out
    assert main(["stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["stream"]["events"] == 1 and stats["rejected"] == {"bad_timestamp": 1}


def test_ingest_movielens_100k(datasets, tmp_path, capsys):
    db = tmp_path / "ml.db"
    assert main(["ingest", str(datasets / "ml-100k"), "--format", "movielens", "--db", str(db),
                 "--json"]) == 0  # fmt: skip
    payload = json.loads(capsys.readouterr().out)
    assert payload["appended"] == 100_000 and payload["report"]["rejected_total"] == 0
    assert payload["log"]["users"] == 943 and payload["log"]["items"] == 1_682
    assert payload["log"]["items_with_metadata"] == 1_682


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"", [], "e.csv: the file is empty"),
        (b"user;item;timestamp\na;b;1\n", ["--delimiter", ","], "is the delimiter ';'?"),
        (b"user,item\na,b\n", [], "no column for the required field 'timestamp'"),
        (b"user,item,timestamp\n\x00\xff\x00", [], "e.csv:2: binary data"),
        (b"user,item,timestamp\nJos\xe9,b,1\n", [], "e.csv:2: byte 0xe9 is not valid utf-8"),
        (b"user,item,timestamp\na,b,1\n", ["--map", "user=nope"], "column 'nope'"),
        (b"user,item,timestamp\na,b,1\n", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_user_mistakes_exit_2_with_one_clear_line(tmp_path, content, args, message):
    data = tmp_path / "e.csv"
    data.write_bytes(content)
    result = _run("ingest", str(data), "--format", "csv", "--db", str(tmp_path / "e.db"), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("lifelong-rec: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_paths_exit_2(tmp_path):
    result = _run("ingest", str(tmp_path / "nope"), "--format", "csv", "--db", str(tmp_path / "d"))
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    result = _run("stats", "--db", str(tmp_path / "missing.db"))
    assert result.returncode == 2 and "no such event log" in result.stderr


# ------------------------------------------------------------------- P3 on OBD: ope, replay


@pytest.fixture(scope="module")
def obd(datasets):
    folder = datasets / "obd"
    if not (folder / "random" / "all").is_dir():
        pytest.skip(f"OBD sample not found at {folder}")
    return folder


def test_ope_json_on_obd(obd, capsys):
    options = "--campaign men --behavior random --evaluation bts --estimators ips,dr --bootstrap 50"
    assert main(["ope", "--log", f"obd:{obd}", *options.split(), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "P3" and report["campaign"] == "men"
    assert report["behavior"] == "random" and report["evaluation"] == "bts"
    assert report["bootstrap"] == 50 and report["behavior_rows"] == 10_000
    assert report["truth"] == pytest.approx(0.0069)  # the BTS log's own click rate
    assert [row["estimator"] for row in report["estimates"]] == ["ips", "dr"]
    for row in report["estimates"]:
        low, high = row["interval"]
        assert low <= row["estimate"] <= high
        assert row["relative_error"] == pytest.approx(
            abs(row["estimate"] - report["truth"]) / report["truth"]
        )


def test_ope_prints_a_table_on_obd(obd, capsys):
    # on-policy IPS: every weight is 1, so the estimate is the truth and the error 0
    options = (
        "--campaign women --behavior random --evaluation random --estimators ips --bootstrap 50"
    )
    assert main(["ope", "--log", f"obd:{obd}", *options.split()]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("estimator"))
    assert lines[header].split()[:3] == ["estimator", "estimate", "truth"]
    assert lines[header].endswith("relative error [95 % interval]")
    name, estimate, truth, error, *_ = lines[header + 1].split()
    assert name == "ips" and estimate == truth and error == "0.000"


def test_replay_json_on_obd(obd, capsys):
    options = "--campaign all --policy epsilon --seed 1"
    assert main(["replay", "--log", f"obd:{obd}", *options.split(), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "P3-replay" and report["campaign"] == "all"
    assert report["policy"] == "epsilon" and report["seed"] == 1
    assert report["rows"] == 10_000 and 0 < report["counted_rows"] < report["rows"]
    low, high = report["interval"]
    assert 0 <= low <= report["estimate"] <= high
    assert report["estimate"] == pytest.approx(report["clicks"] / report["counted_rows"])
    assert report["logged"]["random"]["click_rate"] == pytest.approx(0.0038)
    assert report["logged"]["bts"]["click_rate"] == pytest.approx(0.0042)


def test_replay_prints_counted_rows_and_logged_rates_on_obd(obd, capsys):
    assert main(["replay", "--log", f"obd:{obd}", "--policy", "epsilon"]) == 0
    out = capsys.readouterr().out
    assert "of 10,000 (those where the policy picked the logged item)" in out
    assert "replay click rate: " in out and "(95 % Wilson interval)" in out
    assert "  random  0.0038 " in out and "  bts     0.0042 " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ope", "--log", "csv:{tmp}"], "--log 'csv:{tmp}': use obd:PATH"),
        (["replay", "--log", "{tmp}"], "--log '{tmp}': use obd:PATH"),
        (["ope", "--log", "obd:"], "--log 'obd:': use obd:PATH"),
        (["ope", "--log", "obd:{tmp}/nope"], "--log 'obd:{tmp}/nope': no such folder"),
        (["replay", "--log", "obd:{tmp}"], "random/all not found in it"),
        (["ope", "--log", "obd:{tmp}", "--campaign", "men"], "bts/men not found in it"),
        (["ope", "--log", "obd:{tmp}", "--estimators", "ips,ipw"], "--estimators: 'ipw' is not"),
        (["ope", "--log", "obd:{tmp}", "--bootstrap", "0"], "--bootstrap must be >= 1"),
        (["replay", "--log", "obd:{tmp}", "--policy", "ucb"], "--policy: unknown policy 'ucb'"),
    ],
)
def test_ope_and_replay_mistakes_exit_2_with_one_clear_line(tmp_path, args, message):
    (tmp_path / "random" / "men").mkdir(parents=True)  # a folder that is not all of OBD
    result = _run(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("lifelong-rec: error: ")
    assert message.format(tmp=tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_writes_the_ab_report(tmp_path, capsys):
    out = tmp_path / "p4"
    args = ["simulate", "--policies", "greedy,epsilon(epsilon=0.2)", "--rounds", "20",
            "--out", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [arm["arm"] for arm in report["arms"]] == ["greedy", "epsilon"]
    assert all(arm["slates"] > 0 and arm["regret"] >= 0 for arm in report["arms"])
    assert {"p4.json", "p4.md", "p4.png"} <= {p.name for p in out.iterdir()}
    assert main(["simulate", "--policies", "ucb", "--rounds", "5"]) == 2
    assert "unknown policy 'ucb'" in capsys.readouterr().err


# ------------------------------------------------------------------- evaluate: P1 on a file


def _evaluate(data: str, out, *options: str) -> list[str]:
    cheap = "--models pop --strategies frozen --blocks 5 --workers 0 --no-progress".split()
    return ["evaluate", "--data", data, *cheap, "--out", str(out), *options]


def test_evaluate_removes_only_bad_rows_and_duplicates_and_reports_them(tmp_path, capsys):
    # issue #19: evaluate applied the bot-burst rule to a whole-day-timestamp log and dropped
    # its rows while the report said "0 duplicates dropped"
    rows = [f"u{n % 6},i{n * 7 % 11},{T + 3_600 * n}" for n in range(40)]
    rows += [f"bot,b{n},{T + 100}" for n in range(25)]  # 25 events in one second
    rows += [rows[5], "u1,i2,not-a-time"]  # an exact duplicate, a bad field (line 68)
    data = tmp_path / "e.csv"
    data.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"

    assert main(_evaluate(f"csv:{data}", out)) == 0
    printed = capsys.readouterr().out
    assert "(1 duplicates dropped)" in printed
    assert "Rows removed: 2 of 67 read (1 bad_timestamp, 1 duplicate)." in printed
    report = json.loads((out / "p1.json").read_text())
    assert report["params"]["max_events_per_second"] is None
    assert report["data"]["rows_read"] == 67 and report["data"]["rows"] == 66
    assert report["data"]["duplicates_dropped"] == 1
    assert report["data"]["removed"] == {"bad_timestamp": 1, "duplicate": 1}
    (rejected,) = (json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines())
    assert (rejected["line"], rejected["reason"]) == (68, "bad_timestamp")
    assert "Rows removed: 2 of 67 read" in (out / "p1.md").read_text()

    assert main(_evaluate(f"csv:{data}", out, "--max-events-per-second", "20", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"]["max_events_per_second"] == 20
    assert report["data"]["rows_read"] == 67 and report["data"]["rows"] == 41
    assert report["data"]["removed"] == {"bad_timestamp": 1, "duplicate": 1, "bot_burst": 25}
    reasons = [json.loads(line)["reason"] for line in (out / "rejected.jsonl").open()]
    assert sorted(set(reasons)) == ["bad_timestamp", "bot_burst"] and len(reasons) == 26


def test_evaluate_reads_a_file_with_kind_time_unit_and_delimiter(tmp_path, capsys):
    rows = [f"u{n % 5};i{n * 3 % 13};{(T + 600 * n) * 1_000};view" for n in range(30)]
    rows += [f"u1;i1;{T * 1_000};", f"u2;i2;{T * 1_000};"]  # no kind: --kind says which
    data = tmp_path / "e.csv"
    data.write_text("user;item;timestamp;kind\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    options = ["--delimiter", ";", "--time-unit", "ms", "--kind", "rating", "--json"]
    assert main(_evaluate(f"csv:{data}", out, *options)) == 0
    report = json.loads(capsys.readouterr().out)
    # a rating needs a value: the two rows without a kind were read as ratings
    assert report["data"]["removed"] == {"bad_value": 2} and report["data"]["rows"] == 30

    assert main(_evaluate(f"csv:{data}", out, *options[:4])) == 0  # views by default
    assert json.loads((out / "p1.json").read_text())["data"]["removed"] == {}
    capsys.readouterr()
    assert main(_evaluate(f"csv:{data}", out, "--delimiter", ",")) == 2
    assert "is the delimiter ';'?" in capsys.readouterr().err
    # read as seconds, the milliseconds lie far in the future: every row is rejected
    assert main(_evaluate(f"csv:{data}", out, "--time-unit", "s")) == 2
    assert (
        "the data has 0 rows after warm-up (32 of 32 rows rejected: 32 timestamp_out_of_range)"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------- user errors and bugs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--data", "synthetic", "--models", "mf(nope=1)"], "--models: model "
         "'mf(nope=1)': 'nope=1' is not one of"),
        (["evaluate", "--data", "synthetic", "--models", "mf(factors=0)"], "--models: "),
        (["evaluate", "--data", "synthetic", "--models", "knn"], "--models: unknown model 'knn'"),
        (["evaluate", "--data", "synthetic", "--strategies", "retrain@0"], "--strategies: "
         "strategy 'retrain@0': retrain needs a block count"),
        (["evaluate", "--data", "synthetic", "--warmup", "1.5"], "--warmup must be between 0 "
         "and 1"),
        (["evaluate", "--data", "synthetic", "--blocks", "0"], "--blocks must be >= 1, got 0"),
        (["evaluate", "--data", "synthetic", "--blocks", "10000000"], "--blocks 10000000: the "
         "data has"),
        (["evaluate", "--data", "synthetic", "--kind", "like"], "cleaning options: "
         "default_kind: 'like' is not one of"),
        (["evaluate", "--data", "synthetic", "--max-events-per-second", "-1"], "cleaning options: "
         "max_events_per_second must be >= 1"),
        (["simulate", "--policies", "epsilon(epsilon=7)", "--rounds", "5"], "--policies: "),
        (["demo", "--users", "0"], "--users must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_bad_specs_and_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main([*args, *(["--out", str(tmp_path / "out")] if args[0] == "evaluate" else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("lifelong-rec: error: ") and len(err.strip().splitlines()) == 1
    assert message in err


@pytest.mark.parametrize("error", [ValueError("deep inside"), RuntimeError("deep inside")])
def test_an_internal_error_exits_1_with_its_traceback(tmp_path, capsys, monkeypatch, error):
    # every ValueError was printed as the user's mistake in one line, hiding the bug
    with EventLog(tmp_path / "e.db"):
        pass

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr("lifelong_rec.cli.describe", broken)
    assert main(["stats", "--db", str(tmp_path / "e.db")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{type(error).__name__}: deep inside" in err and "in broken" in err
    assert "lifelong-rec: internal error" in err.strip().splitlines()[-1]
