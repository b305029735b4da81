"""`mlops_score` as a user runs it, against the session's registry: a CSV with broken rows, a glob of Parquet
parts, a PostgreSQL query; the answers equal the library's, the broken rows are in the reject file with
their reasons, and each run is recorded in MLflow with the input's digest."""
import subprocess

import mlflow
import numpy as np
import polars as pl
import pytest

from conftest import BIN, clean_environ, fresh_database


def score(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN/"mlops_score"), *args, "--config", str(config)], env=clean_environ(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def table(registry):
    "The champion and 3,000 flights of its snapshot, as they would come from a warehouse (no label)."
    from mlops_nb.ingest import read_snapshot
    from mlops_nb.registry import load_bundle
    from mlops_nb.runs import use_tracking
    settings, _, _ = registry
    use_tracking(settings)
    champion = load_bundle(settings, alias="champion")
    rows = read_snapshot({"path": settings.snapshots_dir/f"{champion.data_digest}.parquet"}).tail(3000).drop(champion.spec.target)
    return champion, rows


def scored_runs(settings) -> pl.DataFrame:
    from mlops_nb.runs import use_tracking
    use_tracking(settings)
    return pl.from_pandas(mlflow.search_runs(filter_string="tags.`mlops_nb.kind` = 'score'", order_by=["start_time DESC"]))


def test_a_csv_with_broken_rows_is_scored_and_the_broken_rows_rejected_with_their_reasons(registry, table, tmp_path):
    settings, config, _ = registry
    champion, rows = table
    column = next(c for c, rule in champion.contract.columns.items() if rule.type == "float" and c in champion.spec.inputs and rule.max is not None)
    category = next((c for c, rule in champion.contract.columns.items() if rule.categories and rule.unknown == "reject" and c in champion.spec.inputs), None)
    bad = rows.with_columns(pl.when(pl.int_range(pl.len()).is_in([5, 500])).then(champion.contract.columns[column].max + 1e6).otherwise(pl.col(column)).alias(column))
    bad.write_csv(tmp_path/"nightly.csv")
    result = score(config, str(tmp_path/"nightly.csv"), str(tmp_path/"scored.csv"), "--explain", "2")
    assert result.returncode == 3, result.stderr[-3000:]  # some rows rejected: the exit says so
    assert "2998 of 3000 rows scored" in result.stdout and "2 rejected" in result.stdout, result.stdout
    scored, rejected = pl.read_csv(tmp_path/"scored.csv"), pl.read_csv(tmp_path/"scored.rejected.csv")
    assert rejected["row"].to_list() == [5, 500] and all(column in reason and "above" in reason for reason in rejected["reason"]), rejected
    kept = rows.with_row_index("row").filter(~pl.col("row").is_in([5, 500]))
    np.testing.assert_allclose(scored["probability"], champion.predict_proba(kept), rtol=1e-6)
    assert scored["label"].to_list() == (champion.predict_proba(kept) >= champion.threshold).astype(int).tolist()
    assert set(scored["model_version"].cast(pl.String)) == {champion.version} and scored["contributions"][0].startswith('[{"feature"')
    run = scored_runs(settings).row(0, named=True)
    assert (run["metrics.rows"], run["metrics.scored"], run["metrics.rejected"]) == (3000, 2998, 2) and len(run["tags.input_digest"]) == 64
    missing = score(config, str(tmp_path/"nightly.csv"), str(tmp_path/"none.csv"), "--version", "99")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    wrong = rows.drop(list(champion.spec.inputs)[0])
    wrong.write_parquet(tmp_path/"wrong.parquet")
    refused = score(config, str(tmp_path/"wrong.parquet"), str(tmp_path/"refused.parquet"))
    assert refused.returncode == 1 and "lacks the column(s) the model reads" in refused.stderr and list(champion.spec.inputs)[0] in refused.stderr, refused.stderr
    assert not (tmp_path/"refused.parquet").exists() and not list(tmp_path.glob(".refused*"))  # nothing half-written
    if category: assert category  # categories unknown to the contract are checked by the same rules (tested in 00a_contract)


def test_a_glob_of_parquet_parts_scores_as_one_file_with_the_same_digest(registry, table, tmp_path):
    settings, config, _ = registry
    champion, rows = table
    rows.write_parquet(tmp_path/"whole.parquet")
    (tmp_path/"parts").mkdir()
    for i, part in enumerate(rows.iter_slices(1100)): part.write_parquet(tmp_path/"parts"/f"part-{i}.parquet")
    whole = score(config, str(tmp_path/"whole.parquet"), str(tmp_path/"whole_scored.parquet"))
    digest_whole = scored_runs(settings)["tags.input_digest"][0]
    parts = score(config, str(tmp_path/"parts"/"part-*.parquet"), str(tmp_path/"parts_scored.parquet"), "--chunk_rows", "700")
    assert whole.returncode == 0 and parts.returncode == 0, (whole.stderr[-2000:], parts.stderr[-2000:])
    assert scored_runs(settings)["tags.input_digest"][0] == digest_whole  # the rows' digest, whatever the files and chunks
    a, b = pl.read_parquet(tmp_path/"whole_scored.parquet"), pl.read_parquet(tmp_path/"parts_scored.parquet")
    assert a.equals(b) and a.height == 3000 and a["probability"].dtype == pl.Float64


def test_a_postgresql_query_is_scored(registry, table, tmp_path):
    settings, config, _ = registry
    champion, rows = table
    with fresh_database("mlops_score") as url:
        rows.head(1000).write_database("warehouse_flights", url.render_as_string(hide_password=False), if_table_exists="replace")
        source = url.set(drivername="postgresql").render_as_string(hide_password=False)
        asked = score(config, source, str(tmp_path/"from_db.parquet"))
        assert asked.returncode == 1 and "--query" in asked.stderr  # a database needs its query
        result = score(config, source, str(tmp_path/"from_db.parquet"), "--query", "SELECT * FROM warehouse_flights ORDER BY time_hour, flight")
    assert result.returncode == 0, result.stderr[-3000:]
    scored = pl.read_parquet(tmp_path/"from_db.parquet")
    expected = champion.predict_proba(rows.head(1000).sort("time_hour", "flight", maintain_order=True))
    np.testing.assert_allclose(scored["probability"], expected, rtol=1e-5)
