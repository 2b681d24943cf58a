import re

import polars as pl
import pytest

from ranking.intent_parser import parse_instructions
from recdata.instructions import TASKS, InstructionConfig, generate_requests, phrasing_split
from recdata.templates import FAMILIES


@pytest.fixture(scope="module")
def requests(movielens):
    return generate_requests(movielens)


def test_at_least_thirty_phrasings_per_family_split_disjointly():
    split = phrasing_split(42, 2 / 3)
    for family, templates in FAMILIES.items():
        assert len(set(templates)) >= 30, family
        part = split.filter(pl.col("family") == family)
        train = set(part.filter(pl.col("phrasing_set") == "train")["template"])
        held = set(part.filter(pl.col("phrasing_set") == "heldout")["template"])
        assert train and held and not train & held


def _pattern(template: str) -> re.Pattern:
    pre, _, post = template.partition("{desc}")
    body = re.escape(pre) + ("an? .+" if _ else "") + re.escape(post)
    return re.compile(body)


def test_held_out_phrasings_never_reach_training_requests(requests):
    split = phrasing_split(42, 2 / 3)
    for family in FAMILIES:
        held = split.filter((pl.col("family") == family) & (pl.col("phrasing_set") == "heldout"))
        patterns = [_pattern(t) for t in held["template"]]
        seen = requests.filter((pl.col("task") == family) & (pl.col("split") != "test"))
        for text in seen["instruction"]:
            assert not any(p.fullmatch(text) for p in patterns), text
        test = requests.filter((pl.col("task") == family) & (pl.col("split") == "test"))
        assert (test["phrasing_set"] == "heldout").all()
        assert test["template_id"].is_in(held["template_id"].implode()).all()


def test_one_request_per_user_task_and_evaluation_split(requests, movielens):
    for split in ("val", "test"):
        part = requests.filter(pl.col("split") == split)
        assert part.height == len(TASKS) * movielens.n_users
        assert part.select("user_id", "task").is_unique().all()
    assert requests["request_id"].is_unique().all()


def test_intent_names_target_attributes_not_title(requests, movielens):
    intent = requests.filter(pl.col("task") == "intent").join(
        movielens.items.rename({"item_id": "target_item_id"}), on="target_item_id")
    parsed = parse_instructions(intent["instruction"].to_list(),
                                sorted(set(movielens.items["genres"].explode().drop_nulls())),
                                movielens.domain)
    genres = sorted(set(movielens.items["genres"].explode().drop_nulls()))
    asked = [{g for g, on in zip(genres, row, strict=True) if on} for row in parsed.genre_mask]
    for wanted, actual in zip(asked, intent["genres"], strict=True):
        assert wanted <= set(actual)
        assert wanted or not actual
    bare = intent["title"].str.replace(r"\s*\(\d{4}\)$", "").str.to_lowercase()
    long_titles = [(t, i) for t, i in zip(bare, intent["instruction"].str.to_lowercase(),
                                          strict=True) if len(t) >= 8]
    assert long_titles and not any(t in i for t, i in long_titles)


def test_deterministic_for_a_seed(movielens):
    a = generate_requests(movielens, InstructionConfig(seed=3, train_requests_per_user=1))
    b = generate_requests(movielens, InstructionConfig(seed=3, train_requests_per_user=1))
    c = generate_requests(movielens, InstructionConfig(seed=4, train_requests_per_user=1))
    assert a.equals(b)
    assert not a["instruction"].equals(c["instruction"])


def test_conversational_requests_are_true_of_their_target_and_hold_out_their_wording(
        requests, movielens):
    """What a conversational request rules out or bounds never excludes its own target, the
    item it names is from the user's past and never the target, and no held-out phrasing of
    any part reaches a training request."""
    import numpy as np

    from ranking.intent_parser import TitleIndex
    from recdata.conversation import _phrasings

    talk = requests.filter(pl.col("task") == "conversational")
    items = movielens.items
    genres = sorted(set(items["genres"].explode().drop_nulls()))
    parsed = parse_instructions(talk["instruction"].to_list(), genres, movielens.domain,
                                titles=TitleIndex(items["title"].to_list()),
                                now=talk["timestamp"].to_numpy())
    row = {i: r for r, i in enumerate(items["item_id"].to_list())}
    target = np.asarray([row[i] for i in talk["target_item_id"]])
    has = np.stack([items["genres"].list.contains(g).to_numpy() for g in genres], axis=1)
    assert parsed.exclusions.any(axis=1).mean() > 0.3
    assert not (parsed.exclusions & has[target]).any()
    lo, hi = parsed.ranges["year"]
    year = items["year"].cast(pl.Float64).to_numpy()[target]
    assert (np.isfinite(lo) | np.isfinite(hi)).mean() > 0.3
    assert not ((year < lo) | (year > hi)).any()
    named = [m for m in parsed.mentioned if m]
    assert len(named) > 0.3 * talk.height
    assert sum(t in m for t, m in zip(target, parsed.mentioned, strict=True)) <= 2  # title twins
    phrasings = _phrasings(42, 2 / 3, movielens.domain)
    train_text = "\n".join(talk.filter(pl.col("split") != "test")["instruction"])
    for (part, kind), texts in phrasings.items():
        if kind != "heldout":
            continue
        for text in set(texts) - set(phrasings[(part, "train")]):
            body = "".join("[^.?!\n]+?" if re.fullmatch(r"\{\w+\}", piece) else re.escape(piece)
                           for piece in re.split(r"(\{\w+\})", text))
            hit = re.search(rf"(?:^|[.?!] ){body}(?= |$)", train_text, flags=re.MULTILINE)
            assert hit is None, (part, text, hit and hit.group(0))


def test_requests_are_the_same_in_another_process():
    """Hash seeds and thread scheduling must not move a single request (a tie in polars'
    value_counts once changed the conversational requests between runs)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib\nfrom recdata.synthetic import make_synthetic\n"
            "from recdata.instructions import generate_requests\n"
            "ds = make_synthetic(n_users=60, n_items=80, interactions_per_user=12, seed=7)\n"
            "print(hashlib.sha1(generate_requests(ds).write_csv().encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=dict(os.environ, PYTHONHASHSEED=seed)
                              ).stdout.strip() for seed in ("1", "2")}
    from recdata.instructions import generate_requests
    from recdata.synthetic import make_synthetic

    here = hashlib.sha1(generate_requests(make_synthetic(
        n_users=60, n_items=80, interactions_per_user=12, seed=7)).write_csv().encode())
    assert digests == {here.hexdigest()}
