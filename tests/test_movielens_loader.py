import zipfile

import polars as pl
import pytest

from recdata.errors import DataValidationError
from recdata.movielens import load_movielens_100k

FLAGS_TOY = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
FLAGS_DRAMA = "0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0"
U_ITEM = (
    f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS_TOY}\n"
    f"2|Caf\xe9 Drama (1994)|01-Jan-1994||http://y|{FLAGS_DRAMA}\n"
    f"3|unknown|||http://z|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_DATA = "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n"
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def write_canonical(root, data=U_DATA):
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(data)
    (root / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (root / "u.user").write_text(U_USER)
    return root


def test_reads_canonical_directory(tmp_path):
    ds = load_movielens_100k(write_canonical(tmp_path / "ml-100k"))
    assert ds.interactions.height == 3
    assert ds.interactions.schema["timestamp"] == pl.Int64
    items = ds.items.sort("item_id")
    assert items["genres"].to_list() == [["Animation", "Children's", "Comedy"], ["Drama"], []]
    assert items["year"].to_list() == [1995, 1994, None]
    assert items["title"][1] == "Café Drama (1994)"  # latin-1 decoded
    assert ds.users is not None and ds.users["occupation"].to_list() == ["technician", "other"]


def test_reads_zip_with_nested_folder(tmp_path):
    root = write_canonical(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in root.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    ds = load_movielens_100k(archive)
    assert ds.summary() == {"dataset": "movielens-100k", "interactions": 3, "users": 2,
                            "items": 3}


def test_malformed_rating_row_reports_its_line(tmp_path):
    bad = U_DATA + "2\tabc\t4\t881250952\n"
    with pytest.raises(DataValidationError) as info:
        load_movielens_100k(write_canonical(tmp_path / "ml", data=bad))
    assert [(p.file, p.row) for p in info.value.problems] == [("u.data", 4)]


def test_missing_file_is_named(tmp_path):
    root = write_canonical(tmp_path / "ml")
    (root / "u.item").unlink()
    with pytest.raises(DataValidationError, match=r"u\.item"):
        load_movielens_100k(root)
