import polars as pl
import pytest

from recdata.byo import load_custom
from recdata.errors import DataValidationError

ITEMS = "item_id,title,genres,year\n1,Alpha,Comedy|Drama,1994\n2,Beta,Horror,2001\n3,Gamma,,\n"
INTER = "user_id,item_id,timestamp,rating\n1,1,1000,5\n1,2,2021-03-04T10:00:00,3\n2,3,1002,\n"


def write(tmp_path, inter=INTER, items=ITEMS):
    (tmp_path / "i.csv").write_text(inter)
    (tmp_path / "items.csv").write_text(items)
    return tmp_path / "i.csv", tmp_path / "items.csv"


def problems(tmp_path, **kw):
    with pytest.raises(DataValidationError) as info:
        load_custom(*write(tmp_path, **kw))
    return [(p.file.rsplit("/", 1)[-1], p.row, p.column, p.message) for p in info.value.problems]


def test_valid_files_load_with_types(tmp_path):
    ds = load_custom(*write(tmp_path))
    assert ds.interactions.schema["timestamp"] == pl.Int64
    assert ds.interactions["timestamp"][1] == 1614852000  # ISO date-time parsed to unix s
    assert ds.interactions["rating"].to_list() == [5.0, 3.0, None]
    assert ds.items["genres"].to_list() == [["Comedy", "Drama"], ["Horror"], []]
    assert ds.items["year"].to_list() == [1994, 2001, None]


def test_parquet_with_list_genres(tmp_path):
    pl.DataFrame({"item_id": [1, 2], "title": ["A", "B"], "genres": [["X"], ["Y", "Z"]]}
                 ).write_parquet(tmp_path / "items.parquet")
    pl.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [10]}).write_parquet(
        tmp_path / "inter.parquet")
    ds = load_custom(tmp_path / "inter.parquet", tmp_path / "items.parquet")
    assert ds.items["genres"].to_list() == [["X"], ["Y", "Z"]]


def test_misnamed_column_suggests_the_fix(tmp_path):
    found = problems(tmp_path, inter=INTER.replace("user_id", "userid"))
    assert found == [("i.csv", None, "user_id",
                      "missing required column 'user_id' (found 'userid': rename it?)")]


def test_every_row_problem_is_reported_at_once(tmp_path):
    inter = ("user_id,item_id,timestamp,rating\n"
             "1,1,1000,5\n"        # line 2 fine
             ",2,1001,4\n"         # line 3 null user
             "1,x,1002,4\n"        # line 4 unknown item (string ids are fine: recdata.ids)
             "2,3,yesterday,3\n"   # line 5 unparseable timestamp
             "2,9,1003,good\n")    # line 6 unknown item and bad rating
    items = ITEMS + "2,Beta again,Horror,2001\n"  # line 5 duplicate id (with line 3)
    found = problems(tmp_path, inter=inter, items=items)
    assert ("i.csv", 3, "user_id", "null user_id") in found
    assert ("i.csv", 4, "item_id", "item_id x is not in the items file") in found
    assert ("i.csv", 5, "timestamp", "unparseable timestamp yesterday") in found
    assert ("i.csv", 6, "rating", "rating good is not a number") in found
    assert ("i.csv", 6, "item_id", "item_id 9 is not in the items file") in found
    assert ("items.csv", 3, "item_id", "duplicate item_id 2") in found
    assert ("items.csv", 5, "item_id", "duplicate item_id 2") in found


def test_unsupported_format_and_missing_file(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataValidationError, match="unsupported format"):
        load_custom(tmp_path / "a.json", tmp_path / "a.json")
    with pytest.raises(DataValidationError, match="does not exist"):
        load_custom(tmp_path / "nope.csv", tmp_path / "nope.csv")


def test_every_bad_row_of_a_large_file_is_reported_once(tmp_path):
    """A 20,000-row items file reads in several chunks (polars 2.1 panicked filtering it
    for duplicates); each duplicate row is reported, and an empty item id once, as null."""
    from pathlib import Path

    n = 20_000
    ids = [f"i{i}" for i in range(n)] + ["i7", "i7"]
    pl.DataFrame({"item_id": ids, "title": [f"Item {i}" for i in range(n + 2)]}) \
        .write_csv(tmp_path / "items.csv")
    pl.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "", "nope"],
                  "timestamp": ["1000", "1001", "1002"]}).write_csv(tmp_path / "inter.csv")
    with pytest.raises(DataValidationError) as caught:
        load_custom(tmp_path / "inter.csv", tmp_path / "items.csv")
    found = sorted((Path(p.file).name, p.row, p.column) for p in caught.value.problems)
    assert found == [("inter.csv", 3, "item_id"), ("inter.csv", 4, "item_id"),
                     ("items.csv", 9, "item_id"), ("items.csv", n + 2, "item_id"),
                     ("items.csv", n + 3, "item_id")]
