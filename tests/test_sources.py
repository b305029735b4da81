"""Remote sources read for real: Parquet parts and CSV files in S3-compatible object storage (moto's server
on loopback), and PostgreSQL tables through polars + connectorx. Every request goes to 127.0.0.1.

"""
import io
import logging
import os
import socket
import time
import uuid
from datetime import date, datetime, timezone
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import boto3
import polars as pl
import psycopg
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from polars.testing import assert_frame_equal

from conftest import postgres_url
from mlops_nb.config import DataSettings, JoinSettings, SourceSettings, load_settings
from mlops_nb.ingest import SourceError, read_data, read_source, redact, write_snapshot

REGION = "us-east-1"
KEY_ID, SECRET = "mlops-test-key", "mlops-test-Secret-7f3a"
NY = "America/New_York"
UTC_TEXT = "%Y-%m-%dT%H:%M:%SZ"
N_PARTS, ROWS_PER_PART = 4, 6


def closed_port() -> int:
    "A loopback port nothing listens on (bound, then released)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------- object storage (moto server on loopback)

def flight_part(p: int) -> pl.DataFrame:
    "One Parquet part: flights-like rows with keys to join weather and planes on, and some unusable rows."
    rows = []
    for i in range(ROWS_PER_PART):
        k = p*ROWS_PER_PART + i
        rows.append(dict(flight=1000 + k, part=p, origin="EWR" if k % 2 == 0 else "JFK",
                         tailnum=None if k % 9 == 8 else ("N999" if k % 5 == 4 else f"N{k % 5}"),
                         time_hour=f"2013-01-{1 + k//8:02d}T{10 + k % 8:02d}:00:00Z",
                         dep_time=None if k % 7 == 3 else 500 + k,
                         arr_delay=None if k % 11 == 5 else float((k*7) % 40 - 10)))
    return pl.DataFrame(rows, schema=dict(flight=pl.Int64, part=pl.Int64, origin=pl.String, tailnum=pl.String,
                                          time_hour=pl.String, dep_time=pl.Int64, arr_delay=pl.Float64))


ALL_FLIGHTS = pl.concat([flight_part(p) for p in range(N_PARTS)])

# planes: N999 is missing (left join leaves nulls); N0 is listed twice (the first row wins)
PLANES_CSV = b"tailnum,year,seats,manufacturer\nN0,2001,100,EMBRAER\nN1,1999,150,BOEING\nN2,,180,AIRBUS\nN3,2010,55,BOMBARDIER\nN0,1980,1,DUPLICATE\n"
PLANES = {"N0": (2001, 100), "N1": (1999, 150), "N2": (None, 180), "N3": (2010, 55)}


def weather() -> pl.DataFrame:
    "One row per (origin, hour) the flights use, and more; the temperature encodes its keys."
    rows = [dict(origin=o, time_hour=f"2013-01-{d:02d}T{h:02d}:00:00Z", temp=float(d*100 + h + (0.5 if o == "JFK" else 0)))
            for d in (1, 2, 3, 4) for h in range(8, 20) for o in ("EWR", "JFK", "LGA")]
    return pl.DataFrame(rows)


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory):
    "Credentials and config that can reach nothing but the test server: no profile files, no instance metadata."
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", str(home/"config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home/"credentials"))
        yield


@pytest.fixture(scope="module")
def s3(aws_env):
    "A real S3 API (moto's server) on 127.0.0.1 and a free port, with a bucket of Parquet parts and CSV files."
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY_ID,
                              aws_secret_access_key=SECRET,
                              config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
        bucket = f"mlops-nb-test-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        for p in range(N_PARTS):
            client.put_object(Bucket=bucket, Key=f"raw/flights/part-{p:05d}.parquet", Body=parquet_bytes(flight_part(p)))
        client.put_object(Bucket=bucket, Key="raw/flights/_SUCCESS", Body=b"")  # what Spark-like writers leave
        client.put_object(Bucket=bucket, Key="raw/flights_backup/part-00000.parquet", Body=parquet_bytes(flight_part(0)))
        client.put_object(Bucket=bucket, Key="raw/weather/weather.parquet", Body=parquet_bytes(weather()))
        client.put_object(Bucket=bucket, Key="raw/planes/planes.csv", Body=PLANES_CSV)
        options = {"aws_endpoint_url": endpoint, "aws_access_key_id": KEY_ID,
                   "aws_secret_access_key": SECRET, "aws_region": REGION}
        yield dict(endpoint=endpoint, bucket=bucket, client=client, options=options)
    finally:
        server.stop()


def test_bucket_holds_the_objects(s3):
    "The fixture really talks to an S3 API: the listing shows what was uploaded."
    listed = s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix="raw/flights/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert keys == sorted([f"raw/flights/part-{p:05d}.parquet" for p in range(N_PARTS)] + ["raw/flights/_SUCCESS"])


def test_parquet_glob_reads_every_part(s3):
    df = read_source(SourceSettings(uri=f"s3://{s3['bucket']}/raw/flights/*.parquet"), "flights",
                     storage_options=s3["options"])
    assert df.height == N_PARTS*ROWS_PER_PART
    assert df.group_by("part").len().sort("part")["len"].to_list() == [ROWS_PER_PART]*N_PARTS
    assert_frame_equal(df.sort("flight"), ALL_FLIGHTS.sort("flight"))  # same rows, values and types


def test_parquet_prefix_with_format_reads_every_part(s3):
    "A folder-like prefix (no glob) with format = 'parquet' reads the parts under it, not the backup beside it."
    df = read_source(SourceSettings(uri=f"s3://{s3['bucket']}/raw/flights/", format="parquet"), "flights",
                     storage_options=s3["options"])
    assert sorted(df["flight"].to_list()) == sorted(ALL_FLIGHTS["flight"].to_list())


def test_csv_in_bucket(s3):
    df = read_source(SourceSettings(uri=f"s3://{s3['bucket']}/raw/planes/planes.csv"), "planes",
                     storage_options=s3["options"])
    assert df.columns == ["tailnum", "year", "seats", "manufacturer"]
    assert df.schema["year"] == pl.Int64 and df.schema["seats"] == pl.Int64
    assert df.height == 5 and df["year"].null_count() == 1
    assert df.row(0) == ("N0", 2001, 100, "EMBRAER")


def test_read_data_joins_tables_from_the_bucket(s3, tmp_path):
    "Settings as a user writes them (TOML): main table = Parquet parts, joins = Parquet and CSV, all in the bucket."
    b = s3["bucket"]
    options = "\n".join(f'{k} = "{v}"' for k, v in s3["options"].items())
    (tmp_path/"mlops.toml").write_text(f"""
[data]
source = "flights"
keep_rows = "dep_time IS NOT NULL AND arr_delay IS NOT NULL"
target = "late"
target_rule = "arr_delay > 15"
retries = 2
retry_wait = 0.1
joins = [
  {{source = "weather", on = ["origin", "time_hour"], columns = ["temp"]}},
  {{source = "planes", on = ["tailnum"], rename = {{year = "plane_year"}}, columns = ["plane_year", "seats"]}},
]
[data.storage_options]
{options}
[data.sources.flights]
uri = "s3://{b}/raw/flights/*.parquet"
datetimes = {{time_hour = "{UTC_TEXT}"}}
time_zone = "{NY}"
[data.sources.weather]
uri = "s3://{b}/raw/weather/*.parquet"
datetimes = {{time_hour = "{UTC_TEXT}"}}
time_zone = "{NY}"
[data.sources.planes]
uri = "s3://{b}/raw/planes/planes.csv"
""")
    data = load_settings(tmp_path/"mlops.toml", environ={}).data
    df = read_data(data).sort("flight")

    kept = [r for r in ALL_FLIGHTS.sort("flight").iter_rows(named=True)
            if r["dep_time"] is not None and r["arr_delay"] is not None]
    assert 0 < len(kept) < ALL_FLIGHTS.height  # keep_rows dropped some rows, not all
    assert df["flight"].to_list() == [r["flight"] for r in kept]
    assert {"temp", "plane_year", "seats", "late"} <= set(df.columns) and "year" not in df.columns
    assert df.schema["late"] == pl.Int8
    assert df.schema["time_hour"] == pl.Datetime("us", NY)
    assert df["late"].to_list() == [int(r["arr_delay"] > 15) for r in kept]
    assert 0 < df["late"].sum() < df.height  # both classes present
    for got, want in zip(df.iter_rows(named=True), kept):
        utc = datetime.strptime(want["time_hour"], UTC_TEXT).replace(tzinfo=timezone.utc)
        assert got["time_hour"] == utc.astimezone(ZoneInfo(NY))
        assert got["temp"] == utc.day*100 + utc.hour + (0.5 if want["origin"] == "JFK" else 0)
        assert (got["plane_year"], got["seats"]) == PLANES.get(want["tailnum"], (None, None))
    assert df.filter(pl.col("tailnum") == "N999")["seats"].null_count() > 0  # unmatched keys stay, with nulls


def test_unreachable_endpoint_is_retried_then_fails(s3, caplog):
    "A closed port: attempt, wait, attempt, then a SourceError naming the source and the attempts, no secret."
    # max_retries=0 turns off polars' own retries (8 by default, ~10 s per attempt against a closed port)
    options = {**s3["options"], "aws_endpoint_url": f"http://127.0.0.1:{closed_port()}", "max_retries": 0}
    src = SourceSettings(uri=f"s3://{s3['bucket']}/raw/flights/*.parquet")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mlops_nb.ingest"), pytest.raises(SourceError) as info:
        read_source(src, "flights", storage_options=options, retries=2, retry_wait=0.1)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "source 'flights'" in message and src.uri in message
    assert message.endswith("(after 2 attempts)")
    assert SECRET not in message and SECRET not in caplog.text
    assert [r.getMessage() for r in caplog.records if "transient failure" in r.getMessage()][0].startswith(
        "source flights: transient failure (attempt 1 of 2)")
    assert 0.1 <= elapsed < 15


def test_missing_prefix_is_a_clear_error(s3):
    src = SourceSettings(uri=f"s3://{s3['bucket']}/raw/no_such_table/*.parquet")
    with pytest.raises(SourceError) as info:
        read_source(src, "nowhere", storage_options=s3["options"], retries=2, retry_wait=0.1)
    message = str(info.value)
    assert message.startswith(f"source 'nowhere' ({src.uri}) could not be read")
    assert "attempts" not in message, "a source that answered 'not found' is not retried"
    assert SECRET not in message and "utf-8" not in message.lower()


@pytest.mark.parametrize("key", ["raw/no_such_table/part-00000.parquet", "raw/flights"])
def test_missing_key_is_not_called_an_encoding_problem(s3, key):
    src = SourceSettings(uri=f"s3://{s3['bucket']}/{key}", format="parquet")
    with pytest.raises(SourceError) as info:
        read_source(src, "nowhere", storage_options={**s3["options"], "max_retries": 0}, retries=1)
    assert "source 'nowhere'" in str(info.value)
    assert "not valid UTF-8" not in str(info.value)


def test_zero_retries_still_reads_once(s3):
    df = read_source(SourceSettings(uri=f"s3://{s3['bucket']}/raw/planes/planes.csv"), "planes",
                     storage_options=s3["options"], retries=0)
    assert df.height == 5


# ---------------------------------------------------------------- PostgreSQL through connectorx

@pytest.fixture(scope="module")
def pg_url():
    return postgres_url()


NY_TZ = ZoneInfo(NY)
PG_ROWS = [  # id, carrier, origin, dep_time, arr_delay, distance, air_time, sched_dep, flight_date, cancelled
    (k, ["UA", "AA", "DL", "B6"][k % 4], "EWR" if k % 2 else "JFK",
     None if k % 5 == 2 else 500 + k, None if k % 6 == 1 else float(k*9 % 50 - 12),
     10_000_000_000 + k, 100.5 + k, datetime(2013, 1, 1 + k//6, 6 + k % 6, 30, tzinfo=NY_TZ),
     date(2013, 1, 1 + k//6), k % 7 == 6)
    for k in range(14)]
CARRIERS = [("UA", "United Air Lines Inc."), ("AA", "American Airlines Inc."), ("DL", "Delta Air Lines Inc.")]


@pytest.fixture(scope="module")
def pg_tables(pg_url):
    "Two uniquely named tables, filled with psycopg, dropped at the end."
    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    flights, carriers = f"mlops_nb_test_flights_{suffix}", f"mlops_nb_test_carriers_{suffix}"
    with psycopg.connect(pg_url, connect_timeout=3, autocommit=True) as conn:
        conn.execute(f"""create table {flights} (id integer primary key, carrier text not null, origin varchar(3),
            dep_time integer, arr_delay double precision, distance bigint, air_time real,
            sched_dep timestamptz, flight_date date, cancelled boolean)""")
        conn.execute(f"create table {carriers} (carrier text primary key, name text)")
        with conn.cursor() as cur:
            cur.executemany(f"insert into {flights} values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", PG_ROWS)
            cur.executemany(f"insert into {carriers} values (%s, %s)", CARRIERS)
    try:
        yield dict(flights=flights, carriers=carriers)
    finally:
        with psycopg.connect(pg_url, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"drop table if exists {flights}")
            conn.execute(f"drop table if exists {carriers}")


def test_database_query_rows_values_types(pg_url, pg_tables):
    src = SourceSettings(uri=pg_url, query=f"select * from {pg_tables['flights']} order by id")
    df = read_source(src, "warehouse", retries=2, retry_wait=0.1)
    assert dict(df.schema) == dict(id=pl.Int32, carrier=pl.String, origin=pl.String, dep_time=pl.Int32,
                                   arr_delay=pl.Float64, distance=pl.Int64, air_time=pl.Float32,
                                   sched_dep=pl.Datetime("us", "UTC"), flight_date=pl.Date, cancelled=pl.Boolean)
    assert df.height == len(PG_ROWS)
    got = df.with_columns(pl.col("sched_dep").dt.replace_time_zone(None)).rows()
    for g, r in zip(got, PG_ROWS):
        assert g[:7] == r[:7]
        assert g[7] == r[7].astimezone(timezone.utc).replace(tzinfo=None)  # timestamptz arrives in UTC
        assert g[8:] == r[8:]
    assert df["dep_time"].null_count() == sum(r[3] is None for r in PG_ROWS) > 0


def test_read_data_from_database_tables(pg_url, pg_tables):
    "Main table and joined table are two queries against the same server; keep_rows and target_rule apply."
    data = DataSettings(
        source="flights",
        sources={"flights": SourceSettings(uri=pg_url, query=f"select * from {pg_tables['flights']}"),
                 "carriers": SourceSettings(uri=pg_url, query=f"select carrier, name from {pg_tables['carriers']}")},
        joins=[JoinSettings(source="carriers", on=["carrier"], columns=["name"], rename={})],
        keep_rows="NOT cancelled AND arr_delay IS NOT NULL", target="late", target_rule="arr_delay > 15",
        retries=2, retry_wait=0.1)
    df = read_data(data).sort("id")
    kept = [r for r in PG_ROWS if not r[9] and r[4] is not None]
    assert 0 < len(kept) < len(PG_ROWS)
    assert df["id"].to_list() == [r[0] for r in kept]
    assert df["late"].to_list() == [int(r[4] > 15) for r in kept] and df.schema["late"] == pl.Int8
    names = dict(CARRIERS)
    assert df["name"].to_list() == [names.get(r[1]) for r in kept]  # B6 has no carrier row: null
    assert df["name"].null_count() > 0


def with_password(url: str, password: str) -> str:
    "`url` with `password` (and a user) in it, unless it has a password already."
    parts = urlsplit(url)
    if parts.password: return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}"))


def test_one_column_query_does_not_leak_the_password(pg_url):
    "A database query returning one column whose name holds a semicolon is taken for a CSV with the wrong separator."
    url = with_password(pg_url, "Trust-ignores-this-pw")  # trust auth accepts any password
    password = urlsplit(url).password
    try:
        read_source(SourceSettings(uri=url, query='select 1 as "a;b"'), "warehouse", retries=1)
    except SourceError as e:
        assert password not in str(e)
    else:
        pass  # no error at all is fine too


def test_numeric_column_can_be_snapshotted(pg_url, tmp_path):
    df = read_source(SourceSettings(uri=pg_url, query="select 1 as id, 3.25::numeric(10, 2) as fare"), "warehouse", retries=1)
    assert df.schema["fare"] == pl.Float64 and df["fare"].to_list() == [3.25]  # exact decimals arrive as floats
    write_snapshot(df, tmp_path)


@pytest.mark.parametrize("url", ["postgresql://:Pw-secret@db.example/warehouse",
                                 "postgresql://reader:Pw@secret@db.example/warehouse",
                                 "postgresql://db.example/warehouse?user=reader&password=Pw-secret"])
def test_redact_hides_every_password(url):
    assert "secret" not in redact(url)


def test_unreachable_database_is_retried_then_fails_without_the_password(caplog):
    """Port 1 on loopback: nothing listens. Without ingest's own port check connectorx's connection pool would
    wait 30 s per attempt before giving up (not configurable through polars), so the time is checked too."""
    password = "Sup3r-S3cret-pw"
    url = f"postgresql://mlops_reader:{password}@127.0.0.1:1/test"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mlops_nb.ingest"), pytest.raises(SourceError) as info:
        read_source(SourceSettings(uri=url, query="select 1 as one"), "warehouse", retries=2, retry_wait=0.1)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith("source 'warehouse' (postgresql://mlops_reader:***@127.0.0.1:1/test) could not be read")
    assert message.endswith("(after 2 attempts)")
    assert password not in message and password not in caplog.text
    assert "attempt 1 of 2" in caplog.text
    assert elapsed < 10, f"an unreachable database took {elapsed:.0f} s to fail"
