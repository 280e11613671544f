"""Protocol P1: the stream preparation, the ranks, the oracle, reports, and the CLI."""

from __future__ import annotations

import json
import os
import signal
from functools import partial

import numpy as np
import pytest

from lifelong_rec.cli import main
from lifelong_rec.data import synthetic_stream
from lifelong_rec.evaluate import (
    coverage,
    hits,
    markdown_table,
    ndcg,
    novelty,
    prepare,
    prequential,
    recall,
    reciprocal_rank,
    write_report,
)
from lifelong_rec.events import EventBatch
from lifelong_rec.lifelong import Frozen, parse_strategy
from lifelong_rec.models import MatrixFactorization, Popularity

T = 1.7e9


@pytest.fixture(scope="module")
def shop() -> EventBatch:
    return synthetic_stream(n_users=120, n_items=80, n_events=4_000, seed=4).events


# ------------------------------------------------------------------------------ metrics


def test_rank_metrics():
    ranks = np.array([1, 2, 10, 11, np.inf])
    assert hits(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    np.testing.assert_allclose(ndcg(ranks, 10), [1, 1 / np.log2(3), 1 / np.log2(11), 0, 0])
    np.testing.assert_allclose(reciprocal_rank(ranks, 10), [1, 0.5, 0.1, 0, 0])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        hits(ranks, 0)


def test_list_metrics():
    lists = np.array([["a", "b"], ["b", ""]])
    np.testing.assert_allclose(recall(lists, [{"a", "z"}, set()]), [0.5, 0.0])
    assert coverage(lists, 4) == 0.5
    items, counts = np.array(["a", "b"]), np.array([3.0, 1.0])
    assert novelty(np.array([["b"]]), items, counts) == pytest.approx(2.0)  # -log2(1/4)


# ------------------------------------------------------------------------------ preparation


def test_prepare_sorts_deduplicates_and_cuts_blocks():
    events = EventBatch.from_columns(
        ["a", "b", "a", "a", "c", "b", "c", "a", "d", "d", "e"],
        ["x", "y", "x", "z", "x", "x", "y", "x", "z", "z", "w"],
        [5, 1, 5, 2, 3, 4, 6, 7, 8, 8, 9],
    )
    stream = prepare(events, warmup=0.5, blocks=2)
    assert stream.duplicates_dropped == 2  # (a, x, 5) and (d, z, 8) twice each
    assert np.all(np.diff(stream.events.timestamp) >= 0)
    assert len(stream.events) == 9 and stream.warmup_rows == 4
    assert stream.bounds.tolist() == [4, 6, 9]  # the last block takes the remainder
    # (a, x) occurs at t=5 and again at t=7: the second is a repeat
    pairs = list(zip(stream.events.user, stream.events.item, strict=True))
    assert [p for p, r in zip(pairs, stream.repeat, strict=True) if r] == [("a", "x")]
    with pytest.raises(ValueError, match="cannot make 9 blocks"):
        prepare(events, warmup=0.5, blocks=9)
    with pytest.raises(ValueError, match="warmup must be between 0 and 1"):
        prepare(events, warmup=1.0)


# ------------------------------------------------------------------------------ ranks


def test_ranks_by_hand_with_popularity():
    # Warm-up: x is bought 3 times, y twice, z once. Then u1 takes y, then u1 takes z,
    # then u2 takes a never-seen item, then u1 takes x again (a repeat of an earlier row).
    users = ["w1", "w2", "w3", "w1", "w2", "w3", "u1", "u1", "u2", "u1", "u3"]
    items = ["x", "x", "x", "y", "y", "z", "y", "z", "new", "y", "x"]
    events = EventBatch.from_columns(users, items, T + np.arange(len(users)), "purchase")
    report = prequential(
        events,
        {("pop", "frozen"): partial(Frozen, partial(Popularity, half_life_days=None))},
        warmup=6 / 11,
        blocks=1,
        k=2,
        workers=0,
        progress=False,
    )
    result = report.results[0]
    # scored: (u1,y): rank 2 (x above it); (u1,z): y is now excluded, x above -> rank 2;
    # (u2,new): unknown item -> miss; (u1,y) again: a repeat, not scored; (u3,x): rank 1.
    assert result.scored_rows == 4
    assert result.hr == pytest.approx(3 / 4)
    expected_ndcg = (1 / np.log2(3) + 1 / np.log2(3) + 0 + 1) / 4
    assert result.ndcg == pytest.approx(expected_ndcg)
    assert result.unknown_user_share == 1.0  # no test user was in the warm-up
    assert report.oracle["block"]["hr"] == pytest.approx(3 / 4)  # "new" was unknown
    # first interactions with their item: only (u2, new); popularity cannot know it
    assert result.new_items == {"rows": 1, "hr": 0.0, "ndcg": 0.0}


class _FrozenServedPerRow(Frozen):
    """Frozen, but scored row by row: must give exactly the ranks of block scoring."""

    cadence = "row"


def test_block_and_row_scoring_agree_for_a_model_that_does_not_change(shop):
    strategies = {
        ("mf", "frozen"): partial(Frozen, partial(MatrixFactorization, factors=8, iterations=3)),
        ("mf", "frozen-per-row"): partial(
            _FrozenServedPerRow, partial(MatrixFactorization, factors=8, iterations=3)
        ),
    }
    report = prequential(shop, strategies, blocks=20, workers=0, progress=False)
    block, row = report.results
    assert block.per_block["ndcg"] == row.per_block["ndcg"]
    assert (block.hr, block.ndcg, block.scored_rows) == (row.hr, row.ndcg, row.scored_rows)


def test_runs_in_processes_match_runs_in_process(shop):
    strategies = {
        ("mf", spec): partial(parse_strategy, spec, partial(MatrixFactorization, factors=8))
        for spec in ("frozen", "retrain@5", "incremental@block", "naive@row")
    }
    here = prequential(shop, strategies, blocks=20, workers=0, progress=False)
    forked = prequential(shop, strategies, blocks=20, workers=2, progress=False)
    for a, b in zip(here.results, forked.results, strict=True):
        assert (a.model, a.strategy, a.ndcg, a.hr) == (b.model, b.strategy, b.ndcg, b.hr)
        assert b.peak_memory_mib > 0


def test_learning_strategies_beat_frozen_on_a_drifting_stream(shop):
    strategies = {
        ("mf", spec): partial(parse_strategy, spec, partial(MatrixFactorization, factors=16))
        for spec in ("frozen", "incremental@row")
    }
    report = prequential(shop, strategies, blocks=20, workers=0, progress=False)
    frozen, learning = report.results
    assert learning.ndcg > frozen.ndcg
    assert learning.unknown_user_share < frozen.unknown_user_share
    assert frozen.update_seconds < 0.1 * learning.update_seconds  # its hooks do nothing
    assert frozen.update_cpu_seconds < 0.1 * learning.update_cpu_seconds
    # a model that does not change ranks each probe the same twice: exactly no forgetting
    assert frozen.backward_transfer["delta"] == 0.0
    forgetting = learning.backward_transfer
    assert forgetting["probes"] == report.data["probe_rows"] > 5
    assert forgetting["ci95_low"] <= forgetting["delta"] <= forgetting["ci95_high"]
    assert forgetting["delta"] == pytest.approx(forgetting["ndcg_end"] - forgetting["ndcg_after"])
    assert 0 < report.oracle["row"]["hr"] <= 1


def _recording(factory, learned: set[tuple[str, str]]):
    """The strategy ``factory`` makes, with every event its hooks get recorded in ``learned``:
    the only way events reach a strategy (and its replay buffer, and its refits)."""

    def make():
        strategy = factory()
        for hook in ("warm_up", "observe", "end_block"):
            original = getattr(strategy, hook)

            def recorded(events, *rest, original=original):
                learned.update(zip(events.user.tolist(), events.item.tolist(), strict=True))
                return original(events, *rest)

            setattr(strategy, hook, recorded)
        return strategy

    return make


def test_no_strategy_ever_learns_a_probe(shop):
    learned: dict[str, set[tuple[str, str]]] = {}
    strategies = {}
    for model, factory in (("pop", Popularity), ("mf", partial(MatrixFactorization, factors=8))):
        for spec in ("frozen", "retrain@3", "incremental@block", "incremental@row", "naive@row"):
            learned[f"{model} {spec}"] = set()
            strategies[(model, spec)] = _recording(
                partial(parse_strategy, spec, factory), learned[f"{model} {spec}"]
            )
    report = prequential(shop, strategies, blocks=20, workers=0, progress=False, probe_share=0.5)
    stream = prepare(shop, blocks=20, probe_share=0.5)
    probes = set(zip(stream.users.ids(stream.probe_user).tolist(),
                     stream.items.ids(stream.probe_item).tolist(), strict=True))  # fmt: skip
    assert len(probes) == report.data["probe_rows"] > 10
    for name, pairs in learned.items():
        if name != "pop incremental@row":  # pop's is its naive@row, run once (next test)
            assert len(pairs) > 1_000, name
        assert not pairs & probes, name
    # every probe pair left the stream, later rows of the pair too
    stream_pairs = set(zip(stream.events.user.tolist(), stream.events.item.tolist(), strict=True))
    assert not stream_pairs & probes


def test_a_strategy_identical_to_another_runs_once(shop):
    runs = []

    def counted(factory):
        def make():
            strategy = factory()
            original = strategy.warm_up
            strategy.warm_up = lambda events: (runs.append(1), original(events))
            return strategy

        return make

    strategies = {
        (model, spec): counted(partial(parse_strategy, spec, factory))
        for model, factory in (("pop", Popularity), ("mf", partial(MatrixFactorization, factors=8)))
        for spec in ("naive@row", "incremental@row")
    }
    report = prequential(shop, strategies, blocks=10, workers=0, progress=False)
    assert len(runs) == 3  # pop's replay and pull do nothing: its incremental@row is naive@row
    naive, incremental = report.result("pop", "naive@row"), report.result("pop", "incremental@row")
    assert incremental.same_as == "naive@row" and naive.same_as is None
    assert (incremental.ndcg, incremental.per_block) == (naive.ndcg, naive.per_block)
    assert report.result("mf", "incremental@row").same_as is None  # MF's replay refits rows


def test_a_resumed_run_still_runs_an_identical_strategy_once(shop, tmp_path):
    naive = {("pop", "naive@row"): partial(parse_strategy, "naive@row", Popularity)}
    prequential(shop, naive, blocks=10, workers=0, progress=False, folder=tmp_path)

    def never_warmed():
        strategy = parse_strategy("incremental@row", Popularity)
        strategy.warm_up = lambda events: _must_not_run()
        return strategy

    both = naive | {("pop", "incremental@row"): never_warmed}  # the naive one is in the folder
    report = prequential(shop, both, blocks=10, workers=0, progress=False, folder=tmp_path)
    assert report.result("pop", "incremental@row").same_as == "naive@row"


class _DiesAtBlock(Frozen):
    """Frozen, but its process is killed (SIGKILL) at the end of its third block."""

    def end_block(self, block, errors):
        self.blocks_done = getattr(self, "blocks_done", 0) + 1
        if self.blocks_done == 3:
            os.kill(os.getpid(), signal.SIGKILL)


def _must_not_run():
    raise AssertionError("a finished strategy ran again")


def test_a_killed_strategy_resumes_and_the_finished_ones_stay(shop, tmp_path):
    first = {
        ("pop", "naive@block"): partial(parse_strategy, "naive@block", Popularity),
        ("pop", "dies"): partial(_DiesAtBlock, Popularity),
        ("mf", "frozen"): partial(Frozen, partial(MatrixFactorization, factors=8)),
    }
    with pytest.raises(RuntimeError, match=r"\('pop', 'dies'\) failed:\nits process died"):
        prequential(shop, first, blocks=10, workers=1, progress=False, folder=tmp_path)
    written = sorted((tmp_path / "strategies").glob("*.json"))
    assert len(written) == 2  # the two others finished and were written
    before = {path.name: path.read_text() for path in written}
    again = {
        ("pop", "naive@block"): _must_not_run,
        ("pop", "dies"): partial(Frozen, Popularity),  # fixed
        ("mf", "frozen"): _must_not_run,
    }
    report = prequential(shop, again, blocks=10, workers=1, progress=False, folder=tmp_path)
    assert [r.strategy for r in report.results] == ["naive@block", "dies", "frozen"]
    for path in written:
        assert path.read_text() == before[path.name]  # unchanged
    resumed = report.result("pop", "naive@block")
    assert resumed.per_block == json.loads(before[written[0].name])["result"]["per_block"] or (
        resumed.per_block == json.loads(before[written[1].name])["result"]["per_block"]
    )
    assert report.result("pop", "dies").scored_rows == resumed.scored_rows
    # other blocks: other rows, so nothing is taken from the folder (and nothing may run)
    with pytest.raises(RuntimeError, match="a finished strategy ran again"):
        prequential(shop, again, blocks=12, workers=0, progress=False, folder=tmp_path)


# ------------------------------------------------------------------------------ reports, CLI


def test_reports_are_written(shop, tmp_path):
    strategies = {
        ("pop", spec): partial(parse_strategy, spec, Popularity)
        for spec in ("frozen", "retrain@1", "incremental@row")
    }
    report = prequential(shop, strategies, blocks=10, workers=0, progress=False)
    paths = write_report(report, tmp_path)
    payload = json.loads(paths["json"].read_text())
    assert payload["protocol"] == "P1" and len(payload["results"]) == 3
    assert len(payload["results"][0]["per_block"]["ndcg"]) == 10
    assert "incremental@row" in payload["lifelong"]["pop"]
    table = markdown_table(report)
    assert "| pop | incremental@row |" in table and "NDCG vs retrain@1" in table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_with_tensorboard(tmp_path, capsys):
    args = ["evaluate", "--data", "synthetic", "--models", "pop", "--strategies",
            "frozen,naive@block", "--blocks", "5", "--out", str(tmp_path / "out"),
            "--workers", "0", "--no-progress", "--tensorboard", str(tmp_path / "tb")]  # fmt: skip
    assert main(args) == 0
    assert "| pop | naive@block |" in capsys.readouterr().out
    assert (tmp_path / "out" / "p1.png").is_file()
    runs = list((tmp_path / "tb").iterdir())
    assert len(runs) == 2 and all(any(run.iterdir()) for run in runs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "svd"], "unknown model 'svd'"),
        (["--models", "mf(factor=3)"], "'factor=3' is not one of"),
        (["--models", "mf(factors=0)"], "factors must be a positive integer"),
        (["--strategies", "sometimes"], "unknown strategy 'sometimes'"),
        (["--data", "netflix:/x"], "use FORMAT:PATH"),
        (["--blocks", "0"], "--blocks must be >= 1, got 0"),
    ],
)
def test_cli_evaluate_bad_arguments(tmp_path, capsys, args, message):
    base = ["evaluate", "--data", "synthetic", "--out", str(tmp_path), "--no-progress"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err
